package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/latchbroker/latch/broker"
)

// Headers set on every delivery.
const (
	// HeaderSignature is "sha256=" and the hex HMAC-SHA256, keyed with the
	// webhook's secret, of the timestamp header's value, ".", and the body.
	HeaderSignature = "X-Latch-Signature"
	// HeaderTimestamp is the Unix time in seconds the attempt was signed.
	HeaderTimestamp = "X-Latch-Timestamp"
	// HeaderEvent is the event type; HeaderDelivery identifies the
	// delivery, the same across retries (receivers deduplicate by it:
	// delivery is at least once).
	HeaderEvent    = "X-Latch-Event"
	HeaderDelivery = "X-Latch-Delivery"
)

// DefaultEvents are the event types a webhook without Events receives.
var DefaultEvents = []string{
	string(broker.EventApprovalRequested), string(broker.EventApprovalApproved),
	string(broker.EventApprovalDenied), string(broker.EventApprovalExpired),
	string(broker.EventViolation), string(broker.EventPause), string(broker.EventQuarantine),
	string(broker.EventFreeze), string(broker.EventIrrevocable), string(broker.EventAlert),
}

// KnownEvents are the event types a webhook may ask for: every audit
// event type.
var KnownEvents = func() []string {
	out := make([]string, len(broker.EventTypes))
	for i, t := range broker.EventTypes {
		out[i] = string(t)
	}
	return out
}()

// Webhook is one receiver.
type Webhook struct {
	// URL is where events are POSTed (http or https).
	URL string
	// Events are the event types sent to it; empty means DefaultEvents.
	Events []string
	// Secret keys the X-Latch-Signature HMAC. Empty: deliveries are not
	// signed (a warning is logged at New).
	Secret []byte
	// Slack sends {"text": "..."} instead of the JSON Payload, for Slack
	// (and compatible) incoming webhooks.
	Slack bool
}

// Config configures a Notifier. OutboxPath is required.
type Config struct {
	Webhooks []Webhook
	// OutboxPath is the bbolt file of the durable outbox, separate from the
	// store's. It is created if missing.
	OutboxPath string
	Logger     *slog.Logger
	// Now is the clock (time.Now by default): timestamps, signatures and
	// retry schedule.
	Now func() time.Time
	// Client sends the deliveries (default: a client with a 10 s timeout).
	Client *http.Client
	// MinBackoff and MaxBackoff bound the wait before a retry, doubled
	// after each failure (defaults 1 s and 5 min).
	MinBackoff, MaxBackoff time.Duration
	// MaxAttempts is how many times a delivery is tried before it is moved
	// to the dead-letter bucket and logged as an error (default 30).
	MaxAttempts int
	// Poll is how often the outbox is checked for due retries and its
	// depth reported, and the wait before following the audit events
	// again after a failure (default 1 s).
	Poll time.Duration
	// Metrics counts deliveries and watches the outbox (optional).
	Metrics Metrics
}

// Metrics receives what the notifier does; *promstats.Metrics implements
// it.
type Metrics interface {
	// WebhookDelivery counts one attempt's result: delivered, failed (to
	// be retried), dead (given up) or dropped (webhook removed).
	WebhookDelivery(result string)
	// WebhookOutbox is the number of deliveries waiting in the outbox.
	WebhookOutbox(depth int)
}

// Delivery results, as Metrics counts them.
const (
	ResultDelivered = "delivered"
	ResultFailed    = "failed"
	ResultDead      = "dead"
	ResultDropped   = "dropped"
)

type noMetrics struct{}

func (noMetrics) WebhookDelivery(string) {}
func (noMetrics) WebhookOutbox(int)      {}

// Source is where events come from. broker.Audit (a Service's Audit())
// implements it.
type Source interface {
	// Follow is broker.Audit.Follow: every event after a sequence
	// number, in order, then the new ones as they are written. Run resumes
	// it from the outbox's cursor, so events written while latch's
	// notifier was not running are sent too.
	Follow(ctx context.Context, after uint64, f broker.EventFilter, fn func([]broker.Event) error) error
	// LastSeq is broker.Audit.LastSeq: where a new outbox starts.
	LastSeq(ctx context.Context) (uint64, error)
}

var _ Source = broker.Audit{}

// Payload is the JSON body of a (non-Slack) delivery: the audit event
// without its hash-chain fields, and a one-line summary. Events never
// carry secrets, and neither does a payload.
type Payload struct {
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Type    string            `json:"type"`
	Actor   string            `json:"actor,omitempty"`
	Subject string            `json:"subject,omitempty"`
	Task    string            `json:"task,omitempty"`
	Lease   string            `json:"lease,omitempty"`
	Outcome string            `json:"outcome,omitempty"`
	Reasons []string          `json:"reasons,omitempty"`
	Details map[string]string `json:"details,omitempty"`
	Text    string            `json:"text"`
}

var (
	bucketOutbox = []byte("outbox")
	bucketDead   = []byte("dead")
	bucketMeta   = []byte("meta")
	keyCursor    = []byte("cursor")
)

// item is one pending delivery in the outbox.
type item struct {
	URL       string    `json:"url"`
	Delivery  string    `json:"delivery"`
	Type      string    `json:"type"`
	Body      []byte    `json:"body"`
	Attempts  int       `json:"attempts"`
	NextAt    time.Time `json:"next_at"`
	CreatedAt time.Time `json:"created_at"`
	LastError string    `json:"last_error,omitempty"`
}

// Notifier delivers audit events to webhooks. It is safe for concurrent
// use; Run it once.
type Notifier struct {
	hooks   []Webhook
	db      *bolt.DB
	log     *slog.Logger
	now     func() time.Time
	hc      *http.Client
	minBack time.Duration
	maxBack time.Duration
	maxTry  int
	poll    time.Duration
	wakes   []chan struct{} // one per webhook: new deliveries in the outbox
	metrics Metrics
}

// New checks cfg, opens (or creates) the outbox and returns the notifier.
// Nothing is sent until Run.
func New(cfg Config) (*Notifier, error) {
	if cfg.OutboxPath == "" {
		return nil, errors.New("notify: Config.OutboxPath is required")
	}
	n := &Notifier{
		log: cfg.Logger, now: cfg.Now, hc: cfg.Client, minBack: cfg.MinBackoff, maxBack: cfg.MaxBackoff,
		maxTry: cfg.MaxAttempts, poll: cfg.Poll, metrics: cfg.Metrics,
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	if n.metrics == nil {
		n.metrics = noMetrics{}
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.hc == nil {
		n.hc = &http.Client{Timeout: 10 * time.Second}
	}
	if n.minBack <= 0 {
		n.minBack = time.Second
	}
	if n.maxBack <= 0 {
		n.maxBack = 5 * time.Minute
	}
	n.maxBack = max(n.maxBack, n.minBack)
	if n.maxTry <= 0 {
		n.maxTry = 30
	}
	if n.poll <= 0 {
		n.poll = time.Second
	}
	for i, w := range cfg.Webhooks {
		if err := n.addHook(i, w); err != nil {
			return nil, err
		}
	}
	db, err := bolt.Open(cfg.OutboxPath, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("notify: open outbox %s: %w", cfg.OutboxPath, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketOutbox, bucketDead, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("notify: init outbox %s: %w", cfg.OutboxPath, err)
	}
	n.db = db
	return n, nil
}

// addHook checks webhooks[i] and adds it, with DefaultEvents when it
// names none, and copies of its slices, so the caller's config cannot
// change what is sent.
func (n *Notifier) addHook(i int, w Webhook) error {
	u, err := url.Parse(w.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("notify: webhooks[%d].url %q: want http(s)://host/path", i, w.URL)
	}
	for _, prev := range n.hooks {
		if prev.URL == w.URL {
			return fmt.Errorf("notify: webhooks[%d].url %q is listed twice: merge their events", i, w.URL)
		}
	}
	if len(w.Events) == 0 {
		w.Events = DefaultEvents
	}
	for _, e := range w.Events {
		if !slices.Contains(KnownEvents, e) {
			return fmt.Errorf("notify: webhooks[%d].events: unknown event type %q (known: %s)", i, e, strings.Join(KnownEvents, ", "))
		}
	}
	w.Events = slices.Clone(w.Events)
	w.Secret = slices.Clone(w.Secret)
	if len(w.Secret) == 0 {
		n.log.Warn("webhook has no secret: its deliveries are not signed", "url", redactURL(w.URL))
	}
	n.hooks = append(n.hooks, w)
	n.wakes = append(n.wakes, make(chan struct{}, 1))
	return nil
}

// Close closes the outbox. Call it after Run has returned.
func (n *Notifier) Close() error { return n.db.Close() }

// Run delivers src's events until ctx ends: it follows the audit events
// from the outbox's cursor, writes a delivery per matching webhook to the
// outbox, and sends them, retrying failures with exponential backoff.
// Publishing never waits for Run, so delivery can neither block nor fail
// issuance. Run returns nil when ctx ends; an error only when the outbox
// cannot be read or written at start.
func (n *Notifier) Run(ctx context.Context, src Source) error {
	if len(n.hooks) == 0 {
		<-ctx.Done()
		return nil
	}
	cursor, err := n.loadCursor(ctx, src)
	if err != nil {
		return err
	}
	n.dropUnconfigured()
	// One sender per webhook, so that a slow or hanging receiver delays
	// only its own deliveries.
	var wg sync.WaitGroup
	for i, w := range n.hooks {
		wg.Go(func() { n.deliverLoop(ctx, w, n.wakes[i]) })
	}
	wg.Go(func() { n.reportLoop(ctx) })
	defer wg.Wait()
	// Every type: the cursor then moves over the events no webhook wants,
	// and a restart does not read them again.
	followRetrying(ctx, n.log, "webhook outbox", n.poll, func() error {
		return src.Follow(ctx, cursor, broker.EventFilter{}, func(evs []broker.Event) error {
			last := evs[len(evs)-1].Seq
			if err := n.enqueue(evs, last); err != nil {
				return fmt.Errorf("write webhook deliveries to the outbox: %w", err)
			}
			cursor = last
			return nil
		})
	})
	return nil
}

// followRetrying calls follow until ctx ends, again after pause each time
// it fails (the audit log unreadable, the outbox unwritable). follow
// resumes from the last event it handled, so a failure delays events and
// never skips one; it is logged, naming what follows.
func followRetrying(ctx context.Context, log *slog.Logger, what string, pause time.Duration, follow func() error) {
	for {
		err := follow()
		if ctx.Err() != nil {
			return
		}
		log.Error(what+": following the audit events failed; will resume where it stopped", "retry_in", pause, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(pause):
		}
	}
}

// loadCursor returns the last sequence number whose events are all in
// the outbox. On first use it starts at the audit log's end: a new
// webhook is not sent the past.
func (n *Notifier) loadCursor(ctx context.Context, src Source) (uint64, error) {
	var cur uint64
	var found bool
	err := n.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketMeta).Get(keyCursor); len(v) == 8 {
			cur, found = binary.BigEndian.Uint64(v), true
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("notify: read the outbox cursor: %w", err)
	}
	if found {
		return cur, nil
	}
	last, err := src.LastSeq(ctx)
	if err != nil {
		return 0, fmt.Errorf("notify: read the audit log's end: %w", err)
	}
	err = n.db.Update(func(tx *bolt.Tx) error { return putCursor(tx, last) })
	if err != nil {
		return 0, fmt.Errorf("notify: save the outbox cursor: %w", err)
	}
	return last, nil
}

func putCursor(tx *bolt.Tx, c uint64) error {
	return tx.Bucket(bucketMeta).Put(keyCursor, binary.BigEndian.AppendUint64(nil, c))
}

// enqueue writes one delivery per event and matching webhook and moves
// the cursor to cursor, in one transaction — so a delivery is never
// written twice, nor an event skipped — and wakes the senders of the
// webhooks that got one.
func (n *Notifier) enqueue(events []broker.Event, cursor uint64) error {
	now := n.now()
	var items []item
	got := make([]bool, len(n.hooks)) // which webhooks have new deliveries
	for _, e := range events {
		for i, w := range n.hooks {
			if !slices.Contains(w.Events, string(e.Type)) {
				continue
			}
			got[i] = true
			body, err := render(e, w.Slack)
			if err != nil {
				return err
			}
			items = append(items, item{URL: w.URL, Delivery: deliveryID(e.Seq, w.URL), Type: string(e.Type), Body: body, NextAt: now, CreatedAt: now})
		}
	}
	err := n.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketOutbox)
		for _, it := range items {
			v, err := json.Marshal(it)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(it.Delivery), v); err != nil {
				return err
			}
		}
		return putCursor(tx, cursor)
	})
	if err != nil {
		return err
	}
	for i, wake := range n.wakes {
		if !got[i] {
			continue
		}
		select {
		case wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// deliveryID is the outbox key: the event's sequence number (so the
// outbox sorts by event) and the webhook. The same event for the same
// webhook is one delivery, however often it is enqueued.
func deliveryID(seq uint64, u string) string {
	sum := sha256.Sum256([]byte(u))
	return fmt.Sprintf("%020d-%s", seq, hex.EncodeToString(sum[:6]))
}

// deliverLoop sends w's due deliveries whenever woken or polled.
func (n *Notifier) deliverLoop(ctx context.Context, w Webhook, wake <-chan struct{}) {
	tick := time.NewTicker(n.poll)
	defer tick.Stop()
	for {
		items, err := n.outbox(func(it item) bool { return it.URL == w.URL })
		if err != nil {
			n.log.Error("read the webhook outbox", "err", err)
		} else {
			n.deliverTo(ctx, w, items)
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-tick.C:
		}
	}
}

// outbox returns the outbox items keep selects, in event order.
func (n *Notifier) outbox(keep func(item) bool) ([]item, error) {
	var out []item
	err := n.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketOutbox).ForEach(func(_, v []byte) error {
			var it item
			if err := json.Unmarshal(v, &it); err != nil {
				return err
			}
			if keep(it) {
				out = append(out, it)
			}
			return nil
		})
	})
	return out, err
}

// reportLoop reports the outbox's depth every poll until ctx ends.
func (n *Notifier) reportLoop(ctx context.Context) {
	tick := time.NewTicker(n.poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			n.reportOutbox()
		}
	}
}

// reportOutbox reports the outbox's depth to the metrics.
func (n *Notifier) reportOutbox() {
	var depth int
	if err := n.db.View(func(tx *bolt.Tx) error {
		depth = tx.Bucket(bucketOutbox).Stats().KeyN
		return nil
	}); err == nil {
		n.metrics.WebhookOutbox(depth)
	}
}

// dropUnconfigured moves the deliveries to webhooks no longer configured
// to the dead-letter bucket.
func (n *Notifier) dropUnconfigured() {
	items, err := n.outbox(func(it item) bool { _, ok := n.hook(it.URL); return !ok })
	if err != nil {
		n.log.Error("read the webhook outbox", "err", err)
		return
	}
	for _, it := range items {
		n.log.Warn("dropping a delivery to a webhook no longer configured", "url", redactURL(it.URL), "delivery", it.Delivery)
		n.finish(it, false)
		n.metrics.WebhookDelivery(ResultDropped)
	}
}

// deliverTo sends w's outbox items, in event order, until one is not due
// yet or fails: a receiver gets events in order, and one that is down
// costs at most one client timeout a round.
func (n *Notifier) deliverTo(ctx context.Context, w Webhook, items []item) {
	for _, it := range items {
		if ctx.Err() != nil || it.NextAt.After(n.now()) {
			return
		}
		err := n.send(ctx, w, it)
		if err == nil {
			n.finish(it, true)
			n.metrics.WebhookDelivery(ResultDelivered)
			continue
		}
		if ctx.Err() != nil {
			return // shutting down: not the receiver's failure
		}
		it.Attempts++
		it.LastError = err.Error()
		if it.Attempts >= n.maxTry {
			n.metrics.WebhookDelivery(ResultDead)
			n.log.Error("webhook delivery failed for good; kept in the outbox's dead-letter bucket",
				"url", redactURL(it.URL), "delivery", it.Delivery, "type", it.Type, "attempts", it.Attempts, "err", err)
			n.finish(it, false)
			return
		}
		n.metrics.WebhookDelivery(ResultFailed)
		it.NextAt = n.now().Add(n.backoff(it.Attempts))
		n.log.Warn("webhook delivery failed; will retry", "url", redactURL(it.URL), "delivery", it.Delivery,
			"attempts", it.Attempts, "next_at", it.NextAt, "err", err)
		if err := n.put(bucketOutbox, it); err != nil {
			n.log.Error("update the webhook outbox", "err", err)
		}
		return
	}
}

// backoff is the wait after the given number of failed attempts.
func (n *Notifier) backoff(attempts int) time.Duration {
	d := n.minBack
	for i := 1; i < attempts && d < n.maxBack; i++ {
		d *= 2
	}
	return min(d, n.maxBack)
}

func (n *Notifier) hook(u string) (Webhook, bool) {
	for _, w := range n.hooks {
		if w.URL == u {
			return w, true
		}
	}
	return Webhook{}, false
}

func (n *Notifier) put(bucket []byte, it item) error {
	v, err := json.Marshal(it)
	if err != nil {
		return err
	}
	return n.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte(it.Delivery), v) })
}

// finish removes a delivery from the outbox; one that was not delivered
// is kept in the dead-letter bucket.
func (n *Notifier) finish(it item, delivered bool) {
	err := n.db.Update(func(tx *bolt.Tx) error {
		if !delivered {
			v, err := json.Marshal(it)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketDead).Put([]byte(it.Delivery), v); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketOutbox).Delete([]byte(it.Delivery))
	})
	if err != nil {
		n.log.Error("update the webhook outbox", "delivery", it.Delivery, "err", err)
	}
}

// send makes one attempt: a 2xx answer is success.
func (n *Notifier) send(ctx context.Context, w Webhook, it item) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(it.Body))
	if err != nil {
		return err
	}
	ts := strconv.FormatInt(n.now().Unix(), 10)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "latch-notify")
	req.Header.Set(HeaderTimestamp, ts)
	req.Header.Set(HeaderEvent, it.Type)
	req.Header.Set(HeaderDelivery, it.Delivery)
	if len(w.Secret) > 0 {
		req.Header.Set(HeaderSignature, Sign(w.Secret, ts, it.Body))
	}
	resp, err := n.hc.Do(req)
	if err != nil {
		// The error names the URL, which may hold a token (Slack's do).
		var ue *url.Error
		if errors.As(err, &ue) {
			return fmt.Errorf("post: %w", ue.Err)
		}
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

// Sign returns the X-Latch-Signature value for a body signed at timestamp
// ts (the X-Latch-Timestamp value): "sha256=" and the hex HMAC-SHA256 of
// ts + "." + body, keyed with secret.
func Sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte("."))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify checks a delivery as a receiver should: the signature matches
// (in constant time) and the timestamp is within tolerance of now, which
// stops replays of old deliveries.
func Verify(secret []byte, ts, sig string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance < 0 {
		return fmt.Errorf("notify: negative tolerance %s", tolerance)
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fmt.Errorf("notify: bad %s %q", HeaderTimestamp, ts)
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("notify: %s is %s away from now, more than %s", HeaderTimestamp, d, tolerance)
	}
	if !hmac.Equal([]byte(sig), []byte(Sign(secret, ts, body))) {
		return errors.New("notify: signature does not match")
	}
	return nil
}

// render builds a delivery's body.
func render(e broker.Event, slack bool) ([]byte, error) {
	text := Summary(e)
	if slack {
		return json.Marshal(struct {
			Text string `json:"text"`
		}{text})
	}
	return json.Marshal(Payload{Seq: e.Seq, Time: e.Time.UTC(), Type: string(e.Type), Actor: e.Actor, Subject: e.Subject,
		Task: e.Task, Lease: e.Lease, Outcome: e.Outcome, Reasons: e.Reasons, Details: e.Details, Text: text})
}

// Summary is the one-line text of an event, as in Slack messages.
func Summary(e broker.Event) string {
	var b strings.Builder
	b.WriteString("latch: ")
	d := e.Details
	switch e.Type {
	case broker.EventApprovalRequested:
		fmt.Fprintf(&b, "approval requested: %s asks for task %s", e.Actor, e.Task)
		if d["approval_id"] != "" {
			fmt.Fprintf(&b, " (approval %s, %s approval(s) needed by %s)", d["approval_id"], d["required"], d["expires_at"])
		}
	case broker.EventAlert:
		fmt.Fprintf(&b, "alert: %s was issued task %s at tier %s (lease %s)", e.Actor, e.Task, d["tier"], e.Lease)
		if why := d["tier_why"]; why != "" {
			fmt.Fprintf(&b, " because %s", why)
		}
	case broker.EventApprovalApproved, broker.EventApprovalDenied, broker.EventApprovalExpired, broker.EventApprovalReview:
		fmt.Fprintf(&b, "%s", strings.ReplaceAll(string(e.Type), "_", " "))
		if id := d["approval_id"]; id != "" {
			fmt.Fprintf(&b, ": approval %s", id)
		}
		if e.Task != "" {
			fmt.Fprintf(&b, " for task %s", e.Task)
		}
		if e.Subject != "" {
			fmt.Fprintf(&b, " of %s", e.Subject)
		}
		if e.Actor != "" {
			fmt.Fprintf(&b, " by %s", e.Actor)
		}
	default:
		b.WriteString(string(e.Type))
		if e.Subject != "" {
			fmt.Fprintf(&b, ": %s", e.Subject)
		} else if e.Actor != "" {
			fmt.Fprintf(&b, ": %s", e.Actor)
		}
		if e.Task != "" {
			fmt.Fprintf(&b, " task %s", e.Task)
		}
		if e.Lease != "" {
			fmt.Fprintf(&b, " lease %s", e.Lease)
		}
		if e.Actor != "" && e.Subject != "" {
			fmt.Fprintf(&b, " by %s", e.Actor)
		}
	}
	if e.Outcome != "" {
		fmt.Fprintf(&b, " [%s]", e.Outcome)
	}
	if len(e.Reasons) > 0 {
		fmt.Fprintf(&b, " reasons: %s", strings.Join(e.Reasons, ", "))
	}
	if r := d["reason"]; r != "" {
		fmt.Fprintf(&b, " — %q", r)
	}
	return b.String()
}

// redactURL keeps a webhook URL's scheme and host for logs: its path and
// query often hold a token.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Scheme + "://" + u.Host + "/…"
}
