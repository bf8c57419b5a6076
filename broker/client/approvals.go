package client

import (
	"context"
	"net/http"
	"net/url"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// Approvals lists approvals, newest first (viewer, approver or admin).
func (c *Client) Approvals(ctx context.Context, q api.ApprovalQuery) (*api.ApprovalsResponse, error) {
	return send[api.ApprovalsResponse](ctx, c, http.MethodGet, "/v1/approvals", q.Values(), nil)
}

// Approval returns one approval with everything an approver needs: the
// agent, owner, task, params, the agent's reason and trace id, what would
// be minted, TTL, tier and why. Operators see any; an agent sees its own.
// Errors: *Error with code not_found.
func (c *Client) Approval(ctx context.Context, id string) (*api.Approval, error) {
	return c.WaitApproval(ctx, id, 0)
}

// WaitApproval returns the approval once it is no longer pending, or as
// it stands after wait (the server caps one wait at api.MaxApprovalWait;
// call again to wait longer). The HTTP client's Timeout, if any, must
// exceed wait.
func (c *Client) WaitApproval(ctx context.Context, id string, wait time.Duration) (*api.Approval, error) {
	var q url.Values
	if wait > 0 {
		q = url.Values{"wait": {min(wait, api.MaxApprovalWait).String()}}
	}
	var out api.ApprovalResponse
	if err := c.do(ctx, http.MethodGet, api.ApprovalPath(id, ""), q, nil, &out); err != nil {
		return nil, err
	}
	return &out.Approval, nil
}

// Approve records the caller's approval, with a reason (approver or
// admin; never the admin socket, the requesting agent or its owner).
// Errors: *Error with code forbidden, conflict (no longer pending, or
// already reviewed by the caller), invalid (no reason), not_found.
func (c *Client) Approve(ctx context.Context, id, reason string) (*api.Approval, error) {
	return c.review(ctx, id, "approve", reason)
}

// Deny denies the approval, with a reason (approver, admin or the admin
// socket). One deny denies it whatever the approvals so far.
func (c *Client) Deny(ctx context.Context, id, reason string) (*api.Approval, error) {
	return c.review(ctx, id, "deny", reason)
}

func (c *Client) review(ctx context.Context, id, action, reason string) (*api.Approval, error) {
	var out api.ApprovalResponse
	if err := c.do(ctx, http.MethodPost, api.ApprovalPath(id, action), nil, api.ReviewRequest{Reason: reason}, &out); err != nil {
		return nil, err
	}
	return &out.Approval, nil
}
