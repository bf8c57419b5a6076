package notify

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"time"
)

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

// deliverTo sends w's due outbox items: first those that have not
// failed yet, in event order, then those due for a retry, in event
// order. A delivery that fails is moved aside — it waits in the outbox
// for its own retry, with backoff, until MaxAttempts make it a dead
// letter — and the next one goes on: an event a receiver cannot take (a
// handler that fails on it, a body it refuses) does not hold back the
// ones after it. So per webhook, deliveries are sent in event order
// while they succeed; a retried one may arrive after later ones, and
// receivers order by seq.
//
// When the failure is the receiver's rather than the delivery's (see
// receiverFailing) the round ends: the rest would fail too, each at the
// cost of up to a client timeout, so a receiver that is down costs at
// most one a round. The rest go next round — new deliveries before the
// one that failed, which therefore cannot starve them even while its
// backoff is shorter than a round.
func (n *Notifier) deliverTo(ctx context.Context, w Webhook, items []item) {
	slices.SortStableFunc(items, func(x, y item) int { return cmp.Compare(min(x.Attempts, 1), min(y.Attempts, 1)) })
	for _, it := range items {
		if ctx.Err() != nil {
			return
		}
		if it.NextAt.After(n.now()) {
			continue // moved aside, waiting for its retry
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
		n.failed(it, err)
		if receiverFailing(err) {
			return
		}
	}
}

// failed counts a failed attempt of it: retried after a backoff, or,
// after MaxAttempts, moved to the dead letters and logged as an error.
func (n *Notifier) failed(it item, err error) {
	it.Attempts++
	it.LastError = err.Error()
	if it.Attempts >= n.maxTry {
		n.finish(it, false)
		n.log.Error("webhook delivery failed for good; kept in the outbox's dead-letter bucket",
			"url", redactURL(it.URL), "delivery", it.Delivery, "type", it.Type, "attempts", it.Attempts,
			"expires_in", n.deadTTL, "err", err)
		n.metrics.WebhookDelivery(ResultDead)
		return
	}
	it.NextAt = n.now().Add(n.backoff(it.Attempts))
	if err := n.put(bucketOutbox, it); err != nil {
		n.log.Error("update the webhook outbox", "err", err)
	}
	n.log.Warn("webhook delivery failed; will retry", "url", redactURL(it.URL), "delivery", it.Delivery,
		"attempts", it.Attempts, "next_at", it.NextAt, "err", err)
	n.metrics.WebhookDelivery(ResultFailed)
}

// statusError is a receiver's answer other than 2xx.
type statusError struct {
	code   int
	status string
}

func (e *statusError) Error() string { return "receiver answered " + e.status }

// receiverFailing reports whether err says the receiver as a whole is
// failing, not this delivery: no answer at all (down, unreachable, too
// slow), or an answer that speaks for every request — 429 Too Many
// Requests, and the 502, 503 and 504 of a gateway or an overloaded
// server. Any other answer (400, 413, 500…) is about this delivery.
func receiverFailing(err error) bool {
	var se *statusError
	if !errors.As(err, &se) {
		return true
	}
	switch se.code {
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
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
		return &statusError{code: resp.StatusCode, status: resp.Status}
	}
	return nil
}
