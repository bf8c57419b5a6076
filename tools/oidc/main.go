// Command latch-oidc-provider is the OpenID Provider of latch's integration
// tests: zitadel/oidc's OpenID-certified provider library with its example
// login page and in-memory storage, served over TLS on loopback, with the
// users (and their groups) and the one client that a test names.
//
// It is a real provider — discovery, JWKS, authorization code flow with
// PKCE, ID tokens signed with a key of its own, auth_time — not a mock of
// one. It adds two things to the example: a groups claim (scope "groups")
// and the userinfo claims (email, profile) in the ID token, which is where
// latch reads them.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/text/language"
)

// user is one entry of the users file.
type user struct {
	ID       string   `json:"id"`
	Username string   `json:"username"`
	Password string   `json:"password"`
	Email    string   `json:"email"`
	Name     string   `json:"name"`
	Groups   []string `json:"groups"`
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	issuer := flag.String("issuer", "", "issuer URL (https://host:port/)")
	cert := flag.String("cert", "", "TLS certificate file")
	key := flag.String("key", "", "TLS key file")
	usersFile := flag.String("users", "", "JSON file: a list of {id, username, password, email, name, groups}")
	clientID := flag.String("client-id", "latch", "the one client's ID")
	secretFile := flag.String("client-secret-file", "", "file holding the client's secret")
	redirects := flag.String("redirect-uris", "", "the client's redirect URIs, comma-separated")
	flag.Parse()
	if err := run(*listen, *issuer, *cert, *key, *usersFile, *clientID, *secretFile, strings.Split(*redirects, ",")); err != nil {
		fmt.Fprintln(os.Stderr, "latch-oidc-provider:", err)
		os.Exit(1)
	}
}

func run(listen, issuer, cert, key, usersFile, clientID, secretFile string, redirects []string) error {
	users, groups, err := loadUsers(usersFile)
	if err != nil {
		return err
	}
	secret, err := os.ReadFile(secretFile)
	if err != nil {
		return err
	}
	clients := map[string]*storage.Client{clientID: storage.WebClient(clientID, strings.TrimSpace(string(secret)), redirects...)}
	st := &provider{Storage: storage.NewStorageWithClients(users, clients), groups: groups}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	router := exampleop.SetupServer(issuer, st, log, false)
	srv := &http.Server{Addr: listen, Handler: router}
	log.Info("listening", "issuer", issuer, "addr", listen)
	return srv.ListenAndServeTLS(cert, key)
}

// provider is the example's storage with groups and ID-token claims.
type provider struct {
	*storage.Storage
	groups map[string][]string // user ID → groups
}

// GetClientByClientID returns the client asking for userinfo claims and
// groups in its ID tokens.
func (p *provider) GetClientByClientID(ctx context.Context, id string) (op.Client, error) {
	c, err := p.Storage.GetClientByClientID(ctx, id)
	if err != nil {
		return nil, err
	}
	return claimsInIDToken{c}, nil
}

type claimsInIDToken struct{ op.Client }

func (claimsInIDToken) IDTokenUserinfoClaimsAssertion() bool { return true }

// IsScopeAllowed lets the client ask for groups (the example allows only
// its own custom scope).
func (c claimsInIDToken) IsScopeAllowed(scope string) bool {
	return scope == "groups" || c.Client.IsScopeAllowed(scope)
}

// SetUserinfoFromRequest adds the groups claim to the example's claims.
func (p *provider) SetUserinfoFromRequest(ctx context.Context, info *oidc.UserInfo, req op.IDTokenRequest, scopes []string) error {
	if err := p.Storage.SetUserinfoFromRequest(ctx, info, req, scopes); err != nil {
		return err
	}
	if slices.Contains(scopes, "groups") {
		info.AppendClaims("groups", p.groups[req.GetSubject()])
	}
	return nil
}

func loadUsers(path string) (userStore, map[string][]string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	var list []user
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	users, groups := userStore{}, map[string][]string{}
	for _, u := range list {
		users[u.ID] = &storage.User{ID: u.ID, Username: u.Username, Password: u.Password, Email: u.Email, EmailVerified: true,
			FirstName: u.Name, PreferredLanguage: language.English}
		groups[u.ID] = u.Groups
	}
	return users, groups, nil
}

// userStore implements storage.UserStore over the users file.
type userStore map[string]*storage.User

func (u userStore) GetUserByID(id string) *storage.User { return u[id] }

func (u userStore) GetUserByUsername(name string) *storage.User {
	for _, x := range u {
		if x.Username == name {
			return x
		}
	}
	return nil
}

func (userStore) ExampleClientID() string { return storage.ServiceUserID }
