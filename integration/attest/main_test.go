package attest

import (
	"context"
	"fmt"
	"io"
	"os"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/latchbroker/latch/attest"
	"github.com/latchbroker/latch/integration/stack"
)

// st is the stack every test in this package shares: SPIRE for the tests,
// Vault for the comparison benchmark.
var st *stack.Stack

// Environment of the agent process (the test binary run again).
const (
	envAgent        = "LATCH_ATTEST_AGENT"         // set: run as the agent process
	envAgentID      = "LATCH_ATTEST_AGENT_ID"      // the X.509-SVID to pick
	envServerID     = "LATCH_ATTEST_SERVER_ID"     // latch's SPIFFE ID
	envURL          = "LATCH_ATTEST_URL"           // what to GET
	envMethod       = "LATCH_ATTEST_METHOD"        // x509 or jwt
	envReadyTimeout = "LATCH_ATTEST_READY_TIMEOUT" // for OpenWorkloadAPI
)

func TestMain(m *testing.M) {
	if os.Getenv(envAgent) != "" {
		os.Exit(agentMain())
	}
	os.Exit(stack.Main(m, stack.WithSPIRE|stack.WithVault, &st))
}

// agentMain is what an agent does with attest: find its identity through
// the Workload API named by SPIFFE_ENDPOINT_SOCKET, call latch, print the
// status and body. Exit status 2 means it never got an identity.
func agentMain() int {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var agentID spiffeid.ID
	if s := os.Getenv(envAgentID); s != "" {
		agentID = spiffeid.RequireFromString(s)
	}
	timeout, _ := time.ParseDuration(os.Getenv(envReadyTimeout))
	src, err := attest.OpenWorkloadAPI(ctx, attest.WorkloadAPIConfig{ID: agentID, ReadyTimeout: timeout})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer src.Close()
	c, err := attest.NewHTTPClient(src, spiffeid.RequireFromString(os.Getenv(envServerID)), attest.Method(os.Getenv(envMethod)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	resp, err := c.Get(os.Getenv(envURL))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Printf("%d %s", resp.StatusCode, body)
	return 0
}
