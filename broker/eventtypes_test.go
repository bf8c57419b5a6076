package broker_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"slices"
	"strconv"
	"testing"

	"github.com/latchbroker/latch/broker"
)

// TestEventTypes_ListsEveryConstant: a new EventType constant that is
// missing from EventTypes could be written but never filtered on.
func TestEventTypes_ListsEveryConstant(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "audit.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var declared []broker.EventType
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok || vs.Type == nil || len(vs.Values) == 0 {
			return true
		}
		if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "EventType" {
			return true
		}
		for _, v := range vs.Values {
			lit, ok := v.(*ast.BasicLit)
			if !ok {
				continue
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				t.Fatal(err)
			}
			declared = append(declared, broker.EventType(s))
		}
		return true
	})
	if len(declared) < 20 {
		t.Fatalf("found %d EventType constants in audit.go; the parse is broken", len(declared))
	}
	if !slices.Equal(declared, broker.EventTypes) {
		t.Fatalf("EventTypes = %v\nconstants   %v", broker.EventTypes, declared)
	}
}
