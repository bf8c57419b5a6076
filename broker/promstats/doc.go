// Package promstats is latch's Prometheus instrumentation: one Metrics
// value, on a registry of its own (no global state), that the broker
// Service, the HTTP API and the Vault backends report to, and the handler
// of the separate metrics listener.
//
//	stats := promstats.New()
//	svc, _ := broker.NewService(ctx, broker.Config{..., Metrics: stats})
//	h, _ := httpapi.New(httpapi.Config{..., Metrics: stats})
//	vc, _ := vault.New(vault.Config{..., Metrics: stats})
//	go stats.TrackCounts(ctx, store, 15*time.Second)
//	go http.Serve(metricsListener, stats.Handler()) // server.metrics_listen
//
// Metrics:
//
//	latch_requests_total{outcome,reason}         credential requests (issued, denied, limited, failed)
//	latch_issue_duration_seconds                 histogram of issued requests
//	latch_active_leases{template}                gauge, recounted from the store (TrackCounts)
//	latch_approvals_pending                      gauge, recounted from the store (TrackCounts)
//	latch_revocations_total{result}              ok, retry, irrevocable, expires
//	latch_revocation_queue_depth                 gauge
//	latch_violations_total{reason}               unknown_agent, expired, wrong_audience, missing_role, ...
//	latch_refused_total{reason}                  every 4xx by first reason, too_many_refusals included
//	latch_vault_request_duration_seconds{op}     histogram of Vault calls
//	latch_audit_append_failures_total
//	latch_events_dropped_total                   live-feed events dropped for slow subscribers
//	latch_http_requests_total{route,code}
//	latch_http_request_duration_seconds{route}
//	latch_webhook_deliveries_total{result}       delivered, failed, dead, dropped
//	latch_webhook_outbox_depth                   gauge
//
// plus the Go runtime's and the process's. Label values are codes and
// route patterns, never request content; each label is capped at 200
// distinct values ("other" past that).
package promstats
