package backends

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchbroker/latch/broker"
)

func certRequest(ttl time.Duration) broker.MintRequest {
	req := request("service-cert", ttl)
	req.Names = broker.CertNames{
		CommonName: "checkout.eu.svc.example.org",
		AltNames:   []string{"checkout.svc.example.org"},
		URISANs:    []string{"spiffe://example.org/service/checkout"},
	}
	return req
}

func parseCert(t *testing.T, p string) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode([]byte(p))
	if block == nil {
		t.Fatalf("not PEM: %q", p)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVaultPKI_Issue(t *testing.T) {
	e := setup(t)
	ctx := t.Context()
	req := certRequest(10 * time.Minute)
	before := time.Now()
	m, err := e.certs.Mint(ctx, req) // no Prepare: Mint prepares itself
	if err != nil {
		t.Fatalf("Mint: %v", err)
	}
	if keys := m.Secret.Keys(); !slices.Equal(keys, []string{"ca_chain", "certificate", "issuing_ca", "private_key", "private_key_type"}) {
		t.Fatalf("secret fields %v", keys)
	}
	f := m.Secret.Reveal()
	cert := parseCert(t, f["certificate"])

	// Verifies against the PKI mount's CA, for the rendered DNS names.
	roots := x509.NewCertPool()
	roots.AddCert(e.CA)
	for _, name := range []string{"checkout.eu.svc.example.org", "checkout.svc.example.org"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: name, CurrentTime: time.Now()}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if cert.Subject.CommonName != req.Names.CommonName {
		t.Errorf("CN %q", cert.Subject.CommonName)
	}
	if !slices.Contains(cert.DNSNames, "checkout.svc.example.org") {
		t.Errorf("DNS SANs %v lack the alt name", cert.DNSNames)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://example.org/service/checkout" {
		t.Errorf("URI SANs %v", cert.URIs)
	}
	// TTL = lease TTL.
	if lo, hi := before.Add(req.TTL-2*time.Second), time.Now().Add(req.TTL+time.Second); cert.NotAfter.Before(lo) || cert.NotAfter.After(hi) {
		t.Errorf("NotAfter is now + %s, want %s", time.Until(cert.NotAfter).Round(time.Second), req.TTL)
	}
	if !m.ExpiresAt.Equal(cert.NotAfter) || m.Renewable {
		t.Errorf("ExpiresAt %s renewable %v; want NotAfter %s, not renewable", m.ExpiresAt, m.Renewable, cert.NotAfter)
	}
	if _, ok := any(e.certs).(broker.Renewer); ok {
		t.Error("vault-pki claims to renew certificates")
	}
	// The private key belongs to the certificate; the chain ends in the CA.
	if _, err := tls.X509KeyPair([]byte(f["certificate"]), []byte(f["private_key"])); err != nil {
		t.Errorf("key pair: %v", err)
	}
	if !parseCert(t, f["issuing_ca"]).Equal(e.CA) || !strings.Contains(f["ca_chain"], strings.TrimSpace(f["issuing_ca"])) {
		t.Error("issuing_ca / ca_chain do not hold the mount's CA")
	}

	serial := serialHex(t, m.Refs.Serial)
	if serial != cert.SerialNumber.Text(16) || m.Refs.MintAccessor == "" {
		t.Fatalf("refs %+v", m.Refs)
	}
	if e.crlSerials(ctx, t)[serial] {
		t.Fatal("serial on the CRL before Revoke")
	}
	if alive, err := e.certs.Lookup(ctx, m.Refs); err != nil || !alive {
		t.Fatalf("Lookup = %v, %v", alive, err)
	}
	if err := e.certs.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if !e.crlSerials(ctx, t)[serial] {
		t.Fatal("serial not on the CRL after Revoke")
	}
	if alive, err := e.certs.Lookup(ctx, m.Refs); err != nil || alive {
		t.Fatalf("Lookup after revoke = %v, %v", alive, err)
	}
	if err := e.certs.Revoke(ctx, m.Refs); err != nil {
		t.Fatalf("second Revoke: %v, want idempotent", err)
	}
}

func TestVaultPKI_NameOutsideRole(t *testing.T) {
	e := setup(t)
	req := certRequest(time.Minute)
	req.Names.CommonName = "bank.example.com"
	_, err := e.certs.Mint(t.Context(), req)
	if err == nil || errors.Is(err, broker.ErrBackendUnavailable) || !strings.Contains(err.Error(), "400") {
		t.Fatalf("Mint for a name the role forbids = %v, want a permanent 400", err)
	}
}
