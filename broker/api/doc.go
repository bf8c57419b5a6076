// Package api holds the JSON wire types shared by latch's HTTP server
// (broker/httpapi) and its Go client (broker/client), the error codes the
// server answers with, and the limits both sides check requests against.
//
// It imports nothing of latch's own, so a Go agent that links the client
// does not pull in the broker, the policy engine or the store.
//
// # Endpoints
//
// Agents (authenticated by X.509-SVID or JWT-SVID):
//
//	POST   /v1/credentials          CredentialsRequest  → 200 CredentialsResponse (lease, secret)
//	                                                    → 202 CredentialsResponse (approval)
//	POST   /v1/explain              ExplainRequest      → 200 ExplainResponse
//	POST   /v1/leases/{id}/renew    RenewRequest        → 200 LeaseResponse
//	DELETE /v1/leases/{id}                              → 200 ReleaseResponse
//
// Operators (by role: viewer reads, revoker acts, admin does both; the
// admin socket reads and acts):
//
//	GET    /v1/leases?agent=&task=&state=&limit=        → 200 LeasesResponse
//	GET    /v1/leases/{id}                              → 200 LeaseResponse
//	POST   /v1/revoke               RevokeRequest       → 200 RevokeResponse
//	GET    /v1/agents                                   → 200 AgentsResponse
//	POST   /v1/agents/{id}/pause    AgentActionRequest  → 200 AgentResponse
//	POST   /v1/agents/{id}/quarantine                   (same)
//	POST   /v1/agents/{id}/resume                       (same)
//	POST   /v1/freeze               FreezeRequest       → 200 FreezeResponse
//	GET    /v1/audit?after=&limit=&agent=&type=         → 200 AuditResponse
//	GET    /v1/events?agent=&type=&after=               → Server-Sent Events of Event
//
// An agent ID in a path is one segment: escape it with url.PathEscape
// (spiffe:%2F%2Fexample.org%2Fagent%2Fbot), which AgentPath does.
//
// Every error is an ErrorResponse:
//
//	{"error":{"code":"forbidden","message":"denied: ...","reasons":["frozen:billing-close"],"next_allowed_at":"2026-03-02T23:00:00Z"}}
//
// Secrets appear in one place only: CredentialsResponse.Secret.
package api
