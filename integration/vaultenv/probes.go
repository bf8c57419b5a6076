package vaultenv

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"

	"github.com/latchbroker/latch/backends/vaulttoken"
)

// ClientWithToken is a Vault client acting as the agent holding token,
// without retries.
func (e *Env) ClientWithToken(token string) (*vaultapi.Client, error) {
	cfg := vaultapi.DefaultConfig()
	cfg.Address = e.Stack.Vault.Addr
	cfg.MaxRetries = 0
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	c.SetToken(token)
	return c, nil
}

// StatusOf is the HTTP status of a Vault API error, 0 for other errors.
func StatusOf(err error) int {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}

// LookupAccessor is root's view of a token.
func (e *Env) LookupAccessor(ctx context.Context, accessor string) (*vaultapi.Secret, error) {
	return e.Root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": accessor})
}

// TokenAlive asks Vault (as root) whether the token with this accessor
// exists.
func (e *Env) TokenAlive(ctx context.Context, accessor string) (bool, error) {
	_, err := e.LookupAccessor(ctx, accessor)
	if err == nil {
		return true, nil
	}
	if StatusOf(err) == http.StatusBadRequest && strings.Contains(err.Error(), "invalid accessor") {
		return false, nil
	}
	return false, err
}

// PolicyExists reports whether Vault has a policy named name.
func (e *Env) PolicyExists(ctx context.Context, name string) (bool, error) {
	p, err := e.Root.Sys().GetPolicyWithContext(ctx, name)
	return p != "", err
}

// Token is root's view of a token latch created.
type Token struct {
	Accessor, Lease, Agent, Task, DisplayName string
	Policies                                  []string
	TTL                                       time.Duration
}

// LatchTokens lists every lease token in Vault whose latch metadata names agent;
// every latch token when agent is empty.
func (e *Env) LatchTokens(ctx context.Context, agent string) ([]Token, error) {
	s, err := e.Root.Logical().ListWithContext(ctx, "auth/token/accessors")
	if err != nil {
		return nil, fmt.Errorf("list accessors: %w", err)
	}
	var out []Token
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		acc, _ := k.(string)
		info, err := e.LookupAccessor(ctx, acc)
		if err != nil {
			// Revoked since the listing; or being revoked, for which
			// Vault answers even root with permission denied (an accessor
			// whose token is gone or going: hashicorp/vault#3859, #2661;
			// a child of a parent whose tree is being revoked). A probe
			// that repeats sees it gone or back.
			if strings.Contains(err.Error(), "invalid accessor") || StatusOf(err) == http.StatusForbidden {
				continue
			}
			return nil, fmt.Errorf("look up accessor %s: %w", acc, err)
		}
		meta, _ := info.Data["meta"].(map[string]any)
		if meta == nil || meta["latch_agent"] == nil || (agent != "" && meta["latch_agent"] != agent) {
			continue
		}
		tok := Token{Accessor: acc, DisplayName: fmt.Sprint(info.Data["display_name"])}
		tok.Lease, _ = meta["latch_lease"].(string)
		if tok.Lease == "" {
			continue // a vault-token group parent: it holds no secret, its children do
		}
		tok.Agent, _ = meta["latch_agent"].(string)
		tok.Task, _ = meta["latch_task"].(string)
		ps, _ := info.Data["policies"].([]any)
		for _, p := range ps {
			tok.Policies = append(tok.Policies, fmt.Sprint(p))
		}
		if n, ok := info.Data["ttl"].(json.Number); ok {
			secs, _ := n.Int64()
			tok.TTL = time.Duration(secs) * time.Second
		}
		out = append(out, tok)
	}
	return out, nil
}

// LatchPolicies lists the latch-<lease> policies in Vault.
func (e *Env) LatchPolicies(ctx context.Context) ([]string, error) {
	ps, err := e.Root.Sys().ListPoliciesWithContext(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, p := range ps {
		if strings.HasPrefix(p, vaulttoken.PolicyPrefix) {
			out = append(out, p)
		}
	}
	return out, nil
}

// DBLeases lists the Vault leases of database role role.
func (e *Env) DBLeases(ctx context.Context, role string) ([]string, error) {
	prefix := DBMount + "/creds/" + role + "/"
	s, err := e.Root.Logical().ListWithContext(ctx, "sys/leases/lookup/"+prefix)
	if err != nil {
		return nil, err
	}
	if s == nil {
		return nil, nil
	}
	var out []string
	keys, _ := s.Data["keys"].([]any)
	for _, k := range keys {
		out = append(out, prefix+fmt.Sprint(k))
	}
	return out, nil
}

// PGConn is a superuser connection to the stack's PostgreSQL.
func (e *Env) PGConn(ctx context.Context) (*pgx.Conn, error) {
	pg := e.Stack.Postgres
	return pgx.Connect(ctx, pg.URL(pg.User, pg.Password))
}

// PGRoleExists reports whether PostgreSQL has a role named name.
func (e *Env) PGRoleExists(ctx context.Context, name string) (bool, error) {
	conn, err := e.PGConn(ctx)
	if err != nil {
		return false, err
	}
	defer conn.Close(ctx)
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname = $1", name).Scan(&n)
	return n > 0, err
}

// PGRoles lists the PostgreSQL users Vault created for database role role.
func (e *Env) PGRoles(ctx context.Context, role string) ([]string, error) {
	conn, err := e.PGConn(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT rolname FROM pg_roles WHERE rolname LIKE $1 ORDER BY rolname", "v-%-"+role+"-%")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// PGLogin logs in as user and returns current_user.
func (e *Env) PGLogin(ctx context.Context, user, password string) (string, error) {
	conn, err := pgx.Connect(ctx, e.Stack.Postgres.URL(user, password))
	if err != nil {
		return "", err
	}
	defer conn.Close(ctx)
	var who string
	err = conn.QueryRow(ctx, "SELECT current_user").Scan(&who)
	return who, err
}

// CRLSerials returns the serials on the PKI mount's current CRL, as
// big.Int hex (see SerialHex), after checking the CRL's signature.
func (e *Env) CRLSerials(ctx context.Context) (map[string]bool, error) {
	resp, err := e.Root.Logical().ReadRawWithContext(ctx, PKIMount+"/crl")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	der, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse CRL: %w", err)
	}
	if err := crl.CheckSignatureFrom(e.CA); err != nil {
		return nil, fmt.Errorf("CRL not signed by the PKI mount's CA: %w", err)
	}
	out := map[string]bool{}
	for _, r := range crl.RevokedCertificateEntries {
		out[r.SerialNumber.Text(16)] = true
	}
	return out, nil
}

// SerialHex turns Vault's "1a:2b:..." into big.Int hex as the CRL has it;
// "" when it is not hex.
func SerialHex(vaultSerial string) string {
	n, ok := new(big.Int).SetString(strings.ReplaceAll(vaultSerial, ":", ""), 16)
	if !ok {
		return ""
	}
	return n.Text(16)
}
