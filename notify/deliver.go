package notify

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
