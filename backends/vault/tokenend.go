package vault

import (
	"os"
	"strings"
	"time"
)

// A token read from a token file is the one auth method with which latch
// cannot get a new token by itself: once the token cannot be renewed any
// further, someone must write a new one to the file. So latch works out
// when that is (tokenEnd at login, a renewal cut short in watch), shows it
// in a metric and warns in its log, and reads the file again every
// TokenFileCheck to pick up the new token before the old one ends.

// tokenEnd reads a token lookup: end is when the token ends for good —
// its expiry when it is not renewable, its creation plus its explicit max
// TTL when it has one — or zero when renewals may keep it alive (a
// periodic token), or only its mount's max TTL knows (a renewal that
// comes back shorter than fullTTL, the TTL it was created with, tells).
func tokenEnd(data map[string]any, now time.Time) (end time.Time, fullTTL time.Duration) {
	ttl := seconds(data["ttl"])
	fullTTL = seconds(data["creation_ttl"])
	if ttl <= 0 {
		return time.Time{}, fullTTL // never expires
	}
	if renewable, _ := data["renewable"].(bool); !renewable {
		end = now.Add(ttl)
	}
	if max := seconds(data["explicit_max_ttl"]); max > 0 {
		created := time.Unix(number(data["creation_time"]), 0)
		if e := created.Add(max); end.IsZero() || e.Before(end) {
			end = e
		}
	}
	return end, fullTTL
}

// seconds reads a number of seconds from a Vault response field.
func seconds(v any) time.Duration { return time.Duration(number(v)) * time.Second }

// noteEnd shows a's end in the metric and, the first time an end is known
// for a's token, warns: without a new token in the file latch loses
// Vault then.
func (c *Client) noteEnd(a *authState) {
	end := a.endTime()
	c.cfg.Metrics.VaultTokenEnd(end)
	if end.IsZero() || c.warnedEnd.Swap(a.accessor) == a.accessor {
		return
	}
	c.cfg.Logger.Warn("vault: latch's token cannot be renewed past its end; write a new token to token_file before then "+
		"(README: \"latch's own Vault token from a file\")",
		"accessor", a.accessor, "token_file", c.cfg.Auth.TokenFile,
		"ends_at", end.UTC().Format(time.RFC3339), "in", end.Sub(c.cfg.Now()).Round(time.Second))
}

// endTime is a's end, zero when none is known.
func (a *authState) endTime() time.Time {
	if u := a.end.Load(); u != 0 {
		return time.Unix(u, 0)
	}
	return time.Time{}
}

func (a *authState) setEnd(t time.Time) {
	if !t.IsZero() {
		a.end.Store(t.Unix())
	}
}

// tokenFileChanged reports whether the token file now holds another token
// than a's. An unreadable or empty file is no change: the next login says
// what is wrong with it.
func (c *Client) tokenFileChanged(a *authState) bool {
	b, err := os.ReadFile(c.cfg.Auth.TokenFile)
	tok := strings.TrimSpace(string(b))
	return err == nil && tok != "" && tok != a.value()
}
