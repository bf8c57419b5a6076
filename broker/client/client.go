package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/latchbroker/latch/broker/api"
)

// maxResponseBytes bounds a response body the client reads (lease lists
// and audit pages are the largest).
const maxResponseBytes = 32 << 20

// Client calls one latch server. It is safe for concurrent use.
type Client struct {
	hc   *http.Client
	base *url.URL
}

// New returns a client of the server at baseURL ("https://latch:8443"),
// calling it through hc. Build hc with attest.NewHTTPClient, which
// proves latch's identity and presents the caller's SVID; a plain client
// only reaches /healthz and /readyz. Leave hc's Timeout at zero if you
// use Events (streams last), and bound calls with their contexts instead.
func New(hc *http.Client, baseURL string) (*Client, error) {
	if hc == nil {
		return nil, errors.New("client: an *http.Client is required (attest.NewHTTPClient builds one)")
	}
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("client: base URL %q: %w", baseURL, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("client: base URL %q: want https://host:port", baseURL)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return &Client{hc: hc, base: u}, nil
}

// NewUnix returns a client of latch's admin socket at path. Calls are made
// as the break-glass operator "admin-socket", which may read, revoke,
// pause, quarantine, resume and freeze.
func NewUnix(path string) *Client {
	var d net.Dialer
	tr := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Client{hc: &http.Client{Transport: tr}, base: &url.URL{Scheme: "http", Host: "admin-socket"}}
}

// Credentials asks for credentials for a task, as the calling agent. When
// the request needs approval, the answer (202) has Approval set and no
// lease: once approved, call again with ApprovalID (a call while it is
// pending fails with conflict). Errors: *Error with code forbidden
// (denied: Reasons, NextAllowedAt), limit (RetryAfter), conflict,
// unavailable, invalid.
func (c *Client) Credentials(ctx context.Context, req api.CredentialsRequest) (*api.CredentialsResponse, error) {
	return send[api.CredentialsResponse](ctx, c, http.MethodPost, "/v1/credentials", nil, req)
}

// Explain evaluates a credentials request without issuing anything.
func (c *Client) Explain(ctx context.Context, req api.ExplainRequest) (*api.Decision, error) {
	var out api.ExplainResponse
	if err := c.do(ctx, http.MethodPost, "/v1/explain", nil, req, &out); err != nil {
		return nil, err
	}
	return &out.Decision, nil
}

// Renew extends the caller's own lease by ttl from now (0: by its
// original TTL), up to its max TTL.
func (c *Client) Renew(ctx context.Context, leaseID string, ttl time.Duration) (*api.Lease, error) {
	var out api.LeaseResponse
	if err := c.do(ctx, http.MethodPost, "/v1/leases/"+url.PathEscape(leaseID)+"/renew", nil, api.RenewRequest{TTL: api.Duration(ttl)}, &out); err != nil {
		return nil, err
	}
	return &out.Lease, nil
}

// Release ends the caller's own lease: latch revokes its credential.
func (c *Client) Release(ctx context.Context, leaseID string) error {
	return c.do(ctx, http.MethodDelete, "/v1/leases/"+url.PathEscape(leaseID), nil, nil, &api.ReleaseResponse{})
}

// Leases lists leases, newest first (viewer).
func (c *Client) Leases(ctx context.Context, q api.LeaseQuery) (*api.LeasesResponse, error) {
	return send[api.LeasesResponse](ctx, c, http.MethodGet, "/v1/leases", q.Values(), nil)
}

// Lease returns one lease (viewer).
func (c *Client) Lease(ctx context.Context, id string) (*api.Lease, error) {
	var out api.LeaseResponse
	if err := c.do(ctx, http.MethodGet, "/v1/leases/"+url.PathEscape(id), nil, nil, &out); err != nil {
		return nil, err
	}
	return &out.Lease, nil
}

// Revoke queues the revocation of the leases req selects, or with DryRun
// lists them (revoker).
func (c *Client) Revoke(ctx context.Context, req api.RevokeRequest) (*api.RevokeResponse, error) {
	return send[api.RevokeResponse](ctx, c, http.MethodPost, "/v1/revoke", nil, req)
}

// Agents returns the agent inventory (viewer).
func (c *Client) Agents(ctx context.Context) (*api.AgentsResponse, error) {
	return send[api.AgentsResponse](ctx, c, http.MethodGet, "/v1/agents", nil, nil)
}

// Report is the inventory of grants with their last use (viewer); with
// unused > 0, only the grants unused for at least that long.
func (c *Client) Report(ctx context.Context, unused time.Duration) (*api.ReportResponse, error) {
	var q url.Values
	if unused > 0 {
		q = url.Values{"unused": {unused.String()}}
	}
	return send[api.ReportResponse](ctx, c, http.MethodGet, "/v1/report", q, nil)
}

// PauseAgent pauses an agent: its requests are denied until resumed
// (revoker).
func (c *Client) PauseAgent(ctx context.Context, agentID, reason string) (*api.Agent, error) {
	return c.agentAction(ctx, agentID, api.ActionPause, reason)
}

// QuarantineAgent pauses an agent and revokes every live lease it holds
// (revoker).
func (c *Client) QuarantineAgent(ctx context.Context, agentID, reason string) (*api.Agent, error) {
	return c.agentAction(ctx, agentID, api.ActionQuarantine, reason)
}

// ResumeAgent lifts a pause or quarantine (revoker).
func (c *Client) ResumeAgent(ctx context.Context, agentID, reason string) (*api.Agent, error) {
	return c.agentAction(ctx, agentID, api.ActionResume, reason)
}

func (c *Client) agentAction(ctx context.Context, agentID, action, reason string) (*api.Agent, error) {
	var out api.AgentResponse
	if err := c.do(ctx, http.MethodPost, api.AgentPath(agentID, action), nil, api.AgentActionRequest{Reason: reason}, &out); err != nil {
		return nil, err
	}
	return &out.Agent, nil
}

// Freeze starts (on) or ends the global emergency freeze (revoker).
func (c *Client) Freeze(ctx context.Context, on bool, reason string) (*api.Freeze, error) {
	var out api.FreezeResponse
	if err := c.do(ctx, http.MethodPost, "/v1/freeze", nil, api.FreezeRequest{On: &on, Reason: reason}, &out); err != nil {
		return nil, err
	}
	return &out.Freeze, nil
}

// Audit returns one page of the audit log (viewer).
func (c *Client) Audit(ctx context.Context, q api.AuditQuery) (*api.AuditResponse, error) {
	return send[api.AuditResponse](ctx, c, http.MethodGet, "/v1/audit", q.Values(), nil)
}

// ToolCall reports a tool call of the agent's model, to be audited.
func (c *Client) ToolCall(ctx context.Context, call api.ToolCall) error {
	var out api.ToolCallResponse
	return c.do(ctx, http.MethodPost, "/v1/tool-calls", nil, call, &out)
}

// Tasks lists the tasks the calling agent may ask for.
func (c *Client) Tasks(ctx context.Context) (*api.TasksResponse, error) {
	var out api.TasksResponse
	return &out, c.do(ctx, http.MethodGet, "/v1/tasks", nil, nil, &out)
}

// WhoAmI asks who the server takes the caller for.
func (c *Client) WhoAmI(ctx context.Context) (*api.WhoAmI, error) {
	var out api.WhoAmI
	return &out, c.do(ctx, http.MethodGet, "/v1/whoami", nil, nil, &out)
}

// Health checks /healthz.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil, &api.Health{})
}

// Ready checks /readyz: nil when the server is ready, an *Error with code
// unavailable naming why not otherwise.
func (c *Client) Ready(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/readyz", nil, nil, &api.Health{})
}

// url joins the base URL and an escaped path.
func (c *Client) url(path string, q url.Values) string {
	s := c.base.Scheme + "://" + c.base.Host + c.base.EscapedPath() + path
	if len(q) > 0 {
		s += "?" + q.Encode()
	}
	return s
}

// send sends one request and returns its decoded answer.
func send[T any](ctx context.Context, c *Client, method, path string, q url.Values, in any) (*T, error) {
	var out T
	if err := c.do(ctx, method, path, q, in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// do sends one request and decodes a 2xx answer into out, or returns the
// error answer as an *Error.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: encode %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return responseError(resp)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(out); err != nil {
		return fmt.Errorf("client: %s %s: decode the response: %w", method, path, err)
	}
	return nil
}
