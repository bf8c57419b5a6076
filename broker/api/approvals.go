package api

import (
	"net/url"
	"strconv"
	"time"
)

// MaxApprovalWait caps the wait of GET /v1/approvals/{id}?wait=D: a longer
// wait is served as this long, and the client asks again.
const MaxApprovalWait = 120 * time.Second

// ApprovalStatuses are the statuses GET /v1/approvals?status= accepts.
var ApprovalStatuses = []string{ApprovalPending, ApprovalApproved, ApprovalDenied, ApprovalExpired, ApprovalConsumed}

// ApprovalQuery filters GET /v1/approvals; zero fields match everything.
type ApprovalQuery struct {
	Status string
	Agent  string
	// Limit bounds the answer (0: DefaultListLimit; at most MaxListLimit).
	Limit int
}

// Values encodes q as query parameters.
func (q ApprovalQuery) Values() url.Values {
	v := url.Values{}
	setNonEmpty(v, "status", q.Status)
	setNonEmpty(v, "agent", q.Agent)
	if q.Limit != 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return v
}

// ApprovalsResponse lists approvals, newest first. More says that more
// approvals matched than Limit allowed.
type ApprovalsResponse struct {
	Approvals []Approval `json:"approvals"`
	More      bool       `json:"more,omitempty"`
}

// ApprovalResponse carries one approval (show, wait, approve, deny).
type ApprovalResponse struct {
	Approval Approval `json:"approval"`
}

// ReviewRequest is the body of POST /v1/approvals/{id}/approve and
// /deny: the reason is required and goes into the audit log.
type ReviewRequest struct {
	Reason string `json:"reason"`
}

// Validate checks that a reason is given.
func (r *ReviewRequest) Validate() error { return reason(r.Reason) }

// ApprovalPath is the escaped path of an approval, with an action
// ("approve", "deny") when action is not empty.
func ApprovalPath(id, action string) string {
	p := "/v1/approvals/" + url.PathEscape(id)
	if action != "" {
		p += "/" + action
	}
	return p
}
