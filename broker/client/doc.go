// Package client is the Go client of latch's HTTP API, used by the latch CLI
// and by Go agents. Requests and answers are the wire types of broker/api;
// error answers are *Error, with the status, the code and what the server
// said (reasons, next_allowed_at, Retry-After).
//
// An agent, with its SVID from the Workload API (or files, via
// attest.OpenFiles):
//
//	src, err := attest.OpenWorkloadAPI(ctx, attest.WorkloadAPIConfig{})
//	hc, err := attest.NewHTTPClient(src, serverID, attest.MethodX509) // or MethodJWT
//	c, err := client.New(hc, "https://latch.internal:8443")
//	res, err := c.Credentials(ctx, api.CredentialsRequest{
//		Task: "nightly-report", Params: map[string]string{"region": "eu"},
//		Reason: "nightly run", RequestID: runID,
//	})
//	var e *client.Error
//	if errors.As(err, &e) && e.Code == api.CodeLimit {
//		time.Sleep(e.RetryAfter)
//	}
//	defer c.Release(ctx, res.Lease.ID)
//	use(res.Secret["password"]) // res.Secret prints as [redacted]
//
// An operator on the local admin socket:
//
//	c := client.NewUnix("/run/latch/admin.sock")
//	n, err := c.Revoke(ctx, api.RevokeRequest{Agent: id, Reason: "leaked"})
//
// Events streams the audit log live (Server-Sent Events):
//
//	s, err := c.Events(ctx, api.EventsQuery{Types: []string{"issue", "violation"}})
//	defer s.Close()
//	for {
//		e, err := s.Next()
//		...
//	}
package client
