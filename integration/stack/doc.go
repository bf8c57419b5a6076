// Package stack starts the real components latch works with — a Vault dev
// server, a SPIRE server and agent, and a PostgreSQL server — as child
// processes on 127.0.0.1, each in a temporary directory, and tears them down
// again. Every integration test package shares one stack through TestMain:
//
//	var st *stack.Stack
//
//	func TestMain(m *testing.M) {
//		os.Exit(stack.Main(m, stack.All, &st))
//	}
//
// A package that needs to stop Vault and start it again with its state
// (an outage) asks for stack.WithPersistentVault: Vault then runs as a
// regular server on file storage, initialised and unsealed by the harness,
// and st.Vault.Stop / st.Vault.Start take it down and bring it back on the
// same address.
//
// stack.WithEtcd adds a three-member etcd cluster (not in stack.All: only
// the etcd store's tests need it); st.Etcd.Kill and st.Etcd.Restart crash
// one member and bring it back with its data.
//
// The binaries come from `make tools` (.tools/bin). When one is missing the
// harness fails with "run 'make tools'": integration tests never skip.
package stack
