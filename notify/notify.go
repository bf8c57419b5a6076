package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
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
	// DeadLetterTTL is how long a dead letter is kept before it is
	// deleted (default DefaultDeadLetterTTL). Expired ones are deleted
	// at Run's start and then hourly.
	DeadLetterTTL time.Duration
	// Poll is how often the outbox is checked for due retries and its
	// depth reported, and the wait before following the audit events
	// again after a failure (default 1 s).
	Poll time.Duration
	// Metrics counts deliveries and watches the outbox (optional).
	Metrics Metrics
	// Handoff, when set, is shared by the replicas that take turns
	// running the notifier (latch on etcd): see Handoff.
	Handoff Handoff
	// ConsoleURL, when set, is the web console's base URL: deliveries of
	// approval events link to the approval's page (Payload.URL, and a
	// link at the end of a Slack text).
	ConsoleURL string
}

// Handoff keeps, where every replica reads it, the sequence number up to
// which each delivery is done (sent or dead-lettered): the replica that
// runs the notifier next starts after it. What a replica that died had
// queued is then sent again by the next, and some deliveries it had sent
// may be sent twice, with the same delivery ID (X-Latch-Delivery): a
// receiver drops repeats by it. Events are never skipped.
type Handoff interface {
	// LoadDone returns the sequence number saved last; ok is false when
	// none was.
	LoadDone(ctx context.Context) (seq uint64, ok bool, err error)
	// SaveDone saves seq.
	SaveDone(ctx context.Context, seq uint64) error
}

// DefaultDeadLetterTTL is how long dead letters are kept by default: 30
// days. The failure is logged as an error and counted when the letter
// dies, and a month gives whoever that alerts time — past a holiday, up
// to a monthly review — to look at the letters and replay them. Longer
// buys little: the event itself stays in the audit log, which is never
// pruned, so an expired letter's content can still be exported
// (latch audit export --since). Without expiry the outbox file would
// grow for as long as a receiver stays broken.
const DefaultDeadLetterTTL = 30 * 24 * time.Hour

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
	// URL is the web console's page of the approval an approval event is
	// about, when latch has a console.
	URL string `json:"url,omitempty"`
}

// Notifier delivers audit events to webhooks. It is safe for concurrent
// use; Run it once.
type Notifier struct {
	console string // the console's base URL, or ""
	hooks   []Webhook
	db      *bolt.DB
	log     *slog.Logger
	now     func() time.Time
	hc      *http.Client
	minBack time.Duration
	maxBack time.Duration
	maxTry  int
	deadTTL time.Duration
	poll    time.Duration
	wakes   []chan struct{} // one per webhook: new deliveries in the outbox
	metrics Metrics
	handoff Handoff // nil: the outbox is this process's alone
}

// New checks cfg, opens (or creates) the outbox and returns the notifier.
// Nothing is sent until Run.
func New(cfg Config) (*Notifier, error) {
	if cfg.OutboxPath == "" {
		return nil, errors.New("notify: Config.OutboxPath is required")
	}
	n := &Notifier{
		log: cfg.Logger, now: cfg.Now, hc: cfg.Client, minBack: cfg.MinBackoff, maxBack: cfg.MaxBackoff,
		maxTry: cfg.MaxAttempts, deadTTL: cfg.DeadLetterTTL, poll: cfg.Poll, metrics: cfg.Metrics, handoff: cfg.Handoff,
		console: strings.TrimSuffix(cfg.ConsoleURL, "/"),
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
	if n.deadTTL <= 0 {
		n.deadTTL = DefaultDeadLetterTTL
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
	// Saved before anything is queued: a replica that dies before its
	// first report still leaves where the next must start.
	saved := n.handOff(ctx, ^uint64(0))
	n.dropUnconfigured()
	n.pruneDead()
	// One sender per webhook, so that a slow or hanging receiver delays
	// only its own deliveries.
	var wg sync.WaitGroup
	for i, w := range n.hooks {
		wg.Go(func() { n.deliverLoop(ctx, w, n.wakes[i]) })
	}
	wg.Go(func() { n.reportLoop(ctx, saved) })
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

// redactURL keeps a webhook URL's scheme and host for logs: its path and
// query often hold a token.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Scheme + "://" + u.Host + "/…"
}
