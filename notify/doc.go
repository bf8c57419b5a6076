// Package notify sends latch's audit events to webhooks: approvals
// requested, approved, denied and expired, violations, pauses,
// quarantines, freezes, irrevocable leases and tier alerts
// (DefaultEvents), or any other audit event type a webhook asks for, so
// that people hear of them where they are.
//
// A Notifier follows the Service's audit events (Audit.Follow, which
// misses none however far behind it falls), writes one delivery per event
// and matching webhook to a durable outbox — a bbolt file of its own,
// separate from the store — and POSTs them, one sender per webhook so
// that a slow receiver delays only its own deliveries. A delivery that
// fails is moved aside and retried on its own, with exponential backoff
// (MinBackoff doubling up to MaxBackoff), across restarts, until
// MaxAttempts, after which it is moved to a dead-letter bucket and logged
// as an error; dead letters are deleted DeadLetterTTL (30 days) after
// they die. Meanwhile later deliveries to the same webhook go on: per
// webhook, deliveries are sent in event order while they succeed, a
// retried one may arrive after later ones, and receivers that care order
// by the Payload's Seq. A failure that is the receiver's rather than the
// delivery's (no answer; 429, 502, 503, 504) ends the sender's round, so
// that a receiver that is down costs at most one client timeout a round.
// Publishing never waits for the notifier, so delivery can neither
// block nor fail issuance. The outbox records, with the deliveries, the
// last event it holds, and a restart follows on from there: events written
// while the notifier was not running are sent too; on first use it starts
// at the log's end. Delivery is at least once: X-Latch-Delivery is the
// same across retries, for receivers to deduplicate. Deliveries to a
// webhook no longer configured are moved to the dead letters at start.
// Config.Metrics counts the results and watches the outbox's depth.
//
// Bodies are JSON Payloads — the audit event without its hash-chain
// fields, plus a one-line Text — or, for a webhook with Slack set, just
// {"text": "..."}. Audit events never hold secrets, and neither do
// payloads.
//
// Almost any value in an event can come from a caller (an unregistered
// agent names its own task and reason), so the summaries treat every
// value as hostile and quote it for where it goes. In Slack text
// (SlackText) each value is in a code span, with &, < and > escaped as
// Slack documents (&amp; &lt; &gt;) and backticks replaced by U+02CB:
// no mention (<!channel>), link (<url|label>), formatting or code block
// comes from an event's values, only from latch's own words. Payload.Text
// (Summary) is plain: values of letters, digits and -._:/@+ bare, others
// quoted as Go strings. Both are one line: newlines, control characters,
// bidi overrides (U+202E) and other non-printing characters are written
// as escapes (\n, \u202e), and each value is cut at 200 characters. The
// Payload's other fields carry the values raw, as data: a receiver that
// displays them escapes them for its own format. Each attempt carries X-Latch-Timestamp (Unix seconds) and,
// when the webhook has a secret, X-Latch-Signature: "sha256=" and the hex
// HMAC-SHA256 of timestamp + "." + body (see Sign; receivers use Verify,
// which also bounds the timestamp's age).
//
// Usage:
//
//	n, err := notify.New(notify.Config{
//		Webhooks: []notify.Webhook{
//			{URL: "https://hooks.example.org/latch", Secret: secret},                      // DefaultEvents
//			{URL: "https://hooks.slack.com/services/…", Events: []string{"approval_requested"}, Slack: true},
//		},
//		OutboxPath: "/var/lib/latch/notify.db",
//		Logger:     logger,
//	})
//	if err != nil { ... }
//	defer n.Close()                // after Run has returned
//	go n.Run(ctx, svc)             // svc is the *broker.Service; returns when ctx ends
//
// AutoPause (off unless a server runs one) pauses an agent whose requests
// are denied Threshold times within Window, as actor "latch"; the pause is
// audited like any other and reaches webhooks as a pause event:
//
//	ap, err := notify.NewAutoPause(notify.AutoPauseConfig{Threshold: 10, Window: 5 * time.Minute, Logger: logger})
//	go ap.Run(ctx, svc)
package notify
