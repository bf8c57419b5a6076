// Package httpapi is latch's HTTP API: the agent and operator endpoints of
// DESIGN.md over a broker.Service, with identities from attest. The wire
// types are in broker/api; broker/client is the Go client.
//
// # Wiring
//
//	h, err := httpapi.New(httpapi.Config{
//		Service:  svc,             // *broker.Service
//		Verifier: verifier,        // *attest.Verifier
//		Logger:   logger,
//		Metrics:  stats,           // *promstats.Metrics
//		Ready:    func() error { ... }, // nil once reconciliation finished and Vault answered
//	})
//	tlsConfig, _ := verifier.ServerTLSConfig(src)
//	srv := &http.Server{Handler: h, TLSConfig: tlsConfig, ReadHeaderTimeout: 10 * time.Second}
//	go srv.ServeTLS(ln, "", "")
//
//	// The admin socket: the same API, the caller is "admin-socket".
//	admin, _ := httpapi.New(httpapi.Config{Service: svc, AdminSocket: true, Logger: logger, Metrics: stats})
//	aln, _ := httpapi.ListenUnix("/run/latch/admin.sock") // mode 0600
//	go (&http.Server{Handler: admin}).Serve(aln)
//
// # Routes
//
//	GET    /healthz                       none      200 while the process serves
//	GET    /readyz                        none      200 when Ready returns nil, else 503 naming why
//	POST   /v1/credentials                agent     issue a lease for the caller (202: pending approval)
//	POST   /v1/explain                    agent     dry run of that request
//	POST   /v1/leases/{id}/renew          agent     renew the caller's own lease
//	DELETE /v1/leases/{id}                agent     release the caller's own lease
//	GET    /v1/leases                     viewer    list, ?agent=&task=&state=&limit=
//	GET    /v1/leases/{id}                viewer    show
//	POST   /v1/revoke                     revoker   by lease, agent, task, template or all (dry_run lists)
//	GET    /v1/agents                     viewer    inventory
//	POST   /v1/agents/{id}/pause          revoker   {id} is the SPIFFE ID, path-escaped
//	POST   /v1/agents/{id}/quarantine     revoker   pause and revoke every live lease
//	POST   /v1/agents/{id}/resume         revoker
//	POST   /v1/freeze                     revoker   {"on":true|false,"reason":...}
//	GET    /v1/audit                      viewer    ?after=&limit=&agent=&type=
//	GET    /v1/events                     viewer    Server-Sent Events, ?agent=&type=&after=
//	GET    /v1/report                     viewer    grants with owner and last use; ?unused=30d
//	GET    /v1/approvals                  viewer*   list, ?status=&agent=&limit=
//	GET    /v1/approvals/{id}             viewer*   show; ?wait=60s long-polls (capped at api.MaxApprovalWait)
//	POST   /v1/approvals/{id}/approve     approver  {"reason":...}; never the admin socket
//	POST   /v1/approvals/{id}/deny        approver  {"reason":...}; the admin socket too
//
// admin holds every role. viewer* is viewer or approver (an approver reads
// what it is asked to approve); the agent that asked may also show and
// wait on its own approval, and another agent's is not found. A 202 from
// POST /v1/credentials names the approval; the agent waits on it and
// picks it up by asking again with approval_id. Review rules (distinct
// approvers, never the requester, its owner or the admin socket) are the
// Service's. The admin socket may use every operator route except
// approve, and no agent route. Agent routes are open to
// every verified identity: the Service denies unregistered agents (and
// audits the attempt), and acts on a lease only for the agent that holds
// it.
//
// # Requests and errors
//
// Bodies are strict JSON: Content-Type application/json, at most
// MaxBodyBytes (64 KiB), one object, valid UTF-8, no duplicate keys, no
// unknown fields (matched case-sensitively), nothing after the object,
// then the api type's Validate. Query parameters are checked the same way.
// A malformed request is answered with 400 (413 when too large) naming
// the problem and writes one rejected audit event — nothing else.
//
// Every error is api.ErrorResponse, with its status from the one table in
// api.Status. ELIMIT adds Retry-After (whole seconds); EINTERNAL sends a
// generic message with a request ID, and the cause goes only to the log.
// A credential that does not verify is a 401 naming the refusal's kind
// (expired, wrong_audience, foreign_trust_domain, ...) and a violation
// audit event; an operator without the role a route needs gets 403
// naming the role, also audited.
//
// Secrets are written in one place: the body of a granted
// POST /v1/credentials, from Secret.Reveal. If that response cannot be
// delivered, the lease is revoked.
package httpapi
