package checkpoint_test

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/attest/attesttest"
	"github.com/latchbroker/latch/broker/checkpoint"
)

var (
	td      = spiffeid.RequireTrustDomainFromString("example.org")
	latchID = spiffeid.RequireFromPath(td, "/latch")
	hash    = strings.Repeat("ab", 32)
)

func TestSignVerify(t *testing.T) {
	ca := attesttest.New(t, td)
	now := time.Now().Truncate(time.Second)
	svid := ca.X509SVID(latchID, attesttest.Validity(now.Add(-time.Minute), now.Add(time.Hour)))
	signed, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 812, Hash: hash, Time: now}, svid)
	if err != nil {
		t.Fatal(err)
	}
	got, err := checkpoint.Verify(signed, ca.X509Bundle())
	if err != nil {
		t.Fatal(err)
	}
	if got.Seq != 812 || got.Hash != hash || !got.Time.Equal(now) || got.ID != latchID.String() {
		t.Fatalf("Verify = %+v", got)
	}

	// Years later, the SVID long expired: verified at the checkpoint's time.
	old := ca.X509SVID(latchID, attesttest.Validity(now.Add(-48*time.Hour), now.Add(-47*time.Hour)))
	signedOld, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 3, Hash: hash, Time: now.Add(-47*time.Hour - time.Minute)}, old)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoint.Verify(signedOld, ca.X509Bundle()); err != nil {
		t.Fatalf("an old checkpoint: %v", err)
	}
	// Intermediates travel in x5c.
	mid := ca.Intermediate()
	viaMid, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 9, Hash: hash, Time: now}, mid.X509SVID(latchID))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := checkpoint.Verify(viaMid, ca.X509Bundle()); err != nil {
		t.Fatalf("signed by an SVID from an intermediate: %v", err)
	}
}

// TestVerify_Forged: every way to forge or bend a checkpoint fails.
func TestVerify_Forged(t *testing.T) {
	ca, other := attesttest.New(t, td), attesttest.New(t, td)
	now := time.Now().Truncate(time.Second)
	signed, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 812, Hash: hash, Time: now}, ca.X509SVID(latchID))
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(signed, ".")
	payload := func(s string) string {
		return strings.Join([]string{parts[0], base64.RawURLEncoding.EncodeToString([]byte(s)), parts[2]}, ".")
	}
	byOther, _ := checkpoint.Sign(checkpoint.Checkpoint{Seq: 812, Hash: hash, Time: now}, other.X509SVID(latchID))
	outside, _ := checkpoint.Sign(checkpoint.Checkpoint{Seq: 812, Hash: hash, Time: now.Add(48 * time.Hour)}, ca.X509SVID(latchID))
	tests := map[string]string{
		"SeqMoved":        payload(`{"seq":900,"hash":"` + hash + `","time":"` + now.UTC().Format(time.RFC3339) + `","spiffe_id":"` + latchID.String() + `"}`),
		"OtherCA":         byOther,
		"OutsideValidity": outside,
		"Garbage":         "not.a.jws",
		"Empty":           "",
		"Huge":            strings.Repeat("a", checkpoint.MaxSize+1),
		"NoSignature":     parts[0] + "." + parts[1] + ".",
	}
	for name, s := range tests {
		t.Run(name, func(t *testing.T) {
			if c, err := checkpoint.Verify(s, ca.X509Bundle()); err == nil {
				t.Fatalf("Verify accepted %+v", c)
			}
		})
	}
}

func FuzzVerify(f *testing.F) {
	ca := attesttest.New(f, td)
	signed, err := checkpoint.Sign(checkpoint.Checkpoint{Seq: 1, Hash: hash, Time: time.Now()}, ca.X509SVID(latchID))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signed)
	f.Add("a.b.c")
	bundle := ca.X509Bundle()
	f.Fuzz(func(t *testing.T, s string) {
		// Only the one signed checkpoint can verify (in any encoding of
		// the same bytes): nothing else has the key.
		c, err := checkpoint.Verify(s, bundle)
		if err == nil && (c.Seq != 1 || c.Hash != hash || c.ID != latchID.String()) {
			t.Fatalf("a forged checkpoint verified: %q → %+v", s, c)
		}
	})
}
