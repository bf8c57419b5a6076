package integration

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/latchbroker/latch/integration/stack"
)

// These smoke tests prove each component of the harness is the real thing.

func TestSmoke_VaultKV(t *testing.T) {
	ctx := t.Context()
	version, err := st.Vault.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if version != stack.VaultVersion {
		t.Fatalf("sys/health version = %q, want %q", version, stack.VaultVersion)
	}

	c, err := st.Vault.Client()
	if err != nil {
		t.Fatal(err)
	}
	kv := c.KVv2("secret")
	want := fmt.Sprintf("v-%d", time.Now().UnixNano())
	if _, err := kv.Put(ctx, "smoke", map[string]any{"value": want}); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	got, err := kv.Get(ctx, "smoke")
	if err != nil {
		t.Fatalf("kv get: %v", err)
	}
	if got.Data["value"] != want {
		t.Fatalf("kv get value = %v, want %q", got.Data["value"], want)
	}
}

func TestSmoke_SPIREJWTSVID(t *testing.T) {
	ctx := t.Context()
	bundle, err := st.SPIRE.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(stack.TrustDomain, "/agent/smoke")
	token, err := st.SPIRE.MintJWTSVID(ctx, id, time.Minute, "spiffe://example.org/latch")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := jwtsvid.ParseAndValidate(token, bundle, []string{"spiffe://example.org/latch"})
	if err != nil {
		t.Fatalf("validate JWT-SVID against the server's bundle: %v", err)
	}
	if svid.ID != id {
		t.Fatalf("JWT-SVID subject = %s, want %s", svid.ID, id)
	}
	if _, err := jwtsvid.ParseAndValidate(token, bundle, []string{"spiffe://example.org/other"}); err == nil {
		t.Fatal("JWT-SVID validated for an audience it was not minted for")
	}
}

func TestSmoke_SPIREWorkloadAPI(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromPath(stack.TrustDomain, "/workload/smoke")
	entryID, err := st.SPIRE.Register(ctx, stack.Entry{
		ID:        id,
		Selectors: []string{fmt.Sprintf("unix:uid:%d", os.Getuid()), "unix:path:" + exe},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.SPIRE.Unregister(context.Background(), entryID) })

	// The agent syncs new entries every few seconds; the source waits.
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(st.SPIRE.WorkloadAPIAddr())))
	if err != nil {
		t.Fatalf("X509Source from the agent's Workload API: %v", err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != id {
		t.Fatalf("Workload API SVID = %s, want %s", svid.ID, id)
	}
}

func TestSmoke_VaultDatabaseOnPostgres(t *testing.T) {
	ctx := t.Context()
	c, err := st.Vault.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Sys().MountWithContext(ctx, "smoke-db", &vaultapi.MountInput{Type: "database"}); err != nil {
		t.Fatalf("enable database secrets engine: %v", err)
	}
	pg := st.Postgres
	if _, err := c.Logical().WriteWithContext(ctx, "smoke-db/config/pg", map[string]any{
		"plugin_name":    "postgresql-database-plugin",
		"connection_url": pg.VaultConnectionURL(),
		"username":       pg.User,
		"password":       pg.Password,
		"allowed_roles":  "*",
	}); err != nil {
		t.Fatalf("configure database connection: %v", err)
	}
	if _, err := c.Logical().WriteWithContext(ctx, "smoke-db/roles/reader", map[string]any{
		"db_name": "pg",
		"creation_statements": `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';
GRANT CONNECT ON DATABASE postgres TO "{{name}}";`,
		"default_ttl": "5m",
		"max_ttl":     "10m",
	}); err != nil {
		t.Fatalf("create database role: %v", err)
	}
	creds, err := c.Logical().ReadWithContext(ctx, "smoke-db/creds/reader")
	if err != nil {
		t.Fatalf("read dynamic credentials: %v", err)
	}
	user, _ := creds.Data["username"].(string)
	password, _ := creds.Data["password"].(string)
	if user == "" || password == "" || creds.LeaseID == "" {
		t.Fatalf("dynamic credentials incomplete: user=%q lease=%q", user, creds.LeaseID)
	}

	conn, err := pgx.Connect(ctx, pg.URL(user, password))
	if err != nil {
		t.Fatalf("log in with dynamic credentials: %v", err)
	}
	var who string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&who); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if who != user {
		t.Fatalf("current_user = %q, want %q", who, user)
	}

	if err := c.Sys().RevokeWithContext(ctx, creds.LeaseID); err != nil {
		t.Fatalf("revoke lease: %v", err)
	}
	// sys/leases/revoke is synchronous by default: the role is gone now.
	conn, err = pgx.Connect(ctx, pg.URL(user, password))
	if err == nil {
		conn.Close(ctx)
		t.Fatal("login still works after the Vault lease was revoked")
	}
	if !strings.Contains(err.Error(), "password authentication failed") && !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("login after revoke failed for an unexpected reason: %v", err)
	}
}

// TestSmoke_EtcdCluster: three members of the version make tools builds,
// one leader; a write acknowledged before the leader is killed is read
// back from the survivors, and the killed member rejoins with its data.
func TestSmoke_EtcdCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	c, err := st.Etcd.Client()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	members, err := c.MemberList(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != stack.EtcdMembers {
		t.Fatalf("%d members, want %d", len(members.Members), stack.EtcdMembers)
	}
	for _, ep := range st.Etcd.Endpoints() {
		s, err := c.Status(ctx, ep)
		if err != nil {
			t.Fatal(err)
		}
		if s.Version != stack.EtcdVersion {
			t.Fatalf("%s runs etcd %s, want %s", ep, s.Version, stack.EtcdVersion)
		}
	}
	want := fmt.Sprintf("v-%d", time.Now().UnixNano())
	if _, err := c.Put(ctx, "smoke", want); err != nil {
		t.Fatal(err)
	}
	leader, err := st.Etcd.Leader(ctx)
	if err != nil {
		t.Fatal(err)
	}
	st.Etcd.Kill(leader)
	got, err := c.Get(clientv3.WithRequireLeader(ctx), "smoke")
	if err != nil {
		t.Fatalf("read after the leader's kill: %v", err)
	}
	if len(got.Kvs) != 1 || string(got.Kvs[0].Value) != want {
		t.Fatalf("read after the leader's kill: %v, want %q", got.Kvs, want)
	}
	if err := st.Etcd.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	// The restarted member answers from its own data (a serializable read
	// asks no peer): the write was in its log before it died.
	one, err := clientv3.New(clientv3.Config{Endpoints: st.Etcd.Endpoints()[leader : leader+1], DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer one.Close()
	got, err = one.Get(ctx, "smoke", clientv3.WithSerializable())
	if err != nil || len(got.Kvs) != 1 || string(got.Kvs[0].Value) != want {
		t.Fatalf("the restarted member's own read: %v %v, want %q", got, err, want)
	}
}
