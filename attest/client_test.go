package attest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"

	"github.com/latchbroker/latch/attest"
)

func TestNewHTTPClient_Errors(t *testing.T) {
	w := newWorld(t)
	noSVID := attest.NewSource(nil, w.ca.X509Bundle(), nil, nil)
	tests := map[string]struct {
		src    *attest.Source
		id     spiffeid.ID
		method attest.Method
		want   string
	}{
		"no server ID":          {noSVID, spiffeid.ID{}, attest.MethodX509, "server ID is required"},
		"mTLS without an SVID":  {noSVID, serverID, attest.MethodX509, "needs an X.509-SVID"},
		"bearer without tokens": {noSVID, serverID, attest.MethodJWT, attest.ErrNoJWTSource.Error()},
		"unknown method":        {noSVID, serverID, "basic", "unknown method"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			_, err := attest.NewHTTPClient(tt.src, tt.id, tt.method)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v; want %q", err, tt.want)
			}
		})
	}
}

type failingSource struct{}

func (failingSource) FetchJWTSVID(context.Context, jwtsvid.Params) (*jwtsvid.SVID, error) {
	return nil, errors.New("agent unreachable")
}

type trackedBody struct {
	io.Reader
	closed bool
}

func (b *trackedBody) Close() error { b.closed = true; return nil }

// A RoundTripper must close the request body even when it fails.
func TestBearerTransport_ClosesBodyOnError(t *testing.T) {
	body := &trackedBody{Reader: strings.NewReader("{}")}
	req, err := http.NewRequest(http.MethodPost, "https://latch.test/v1/credentials", body)
	if err != nil {
		t.Fatal(err)
	}
	tr := &attest.BearerTransport{Source: failingSource{}, Audience: serverID}
	if _, err := tr.RoundTrip(req); err == nil || !body.closed {
		t.Fatalf("err = %v, body closed = %v", err, body.closed)
	}
	if req.Header.Get("Authorization") != "" {
		t.Fatal("RoundTrip modified the caller's request")
	}
}
