package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"
)

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
