package templates

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/interpreter"
)

// Escalation conditions are CEL over:
//
//	params  map(string, string)  the request's parameters, defaults applied
//	agent   map(string, string)  "id" (the requesting SPIFFE ID) and "owner"
//	task    string               the template name
//	now     timestamp            the evaluation time
//	in_window("name") bool       whether a freeze window is active at now
//
// in_window is a macro: its argument must be a quoted window name, checked
// at load, and it becomes a boolean variable (_w<index>) that Evaluate fills
// in, so nothing about windows is looked up by name at request time.

// agentKeys are the keys of the CEL agent map.
var agentKeys = map[string]bool{"id": true, "owner": true}

func windowVar(i int) string { return "_w" + strconv.Itoa(i) }

// newCELEnv builds the environment for a policy whose windows are indexed by
// windowIndex.
func newCELEnv(windowIndex map[string]int) (*cel.Env, error) {
	names := make([]string, 0, len(windowIndex))
	for n := range windowIndex {
		names = append(names, n)
	}
	sort.Strings(names)
	expand := func(eh cel.MacroExprFactory, _ ast.Expr, args []ast.Expr) (ast.Expr, *cel.Error) {
		arg := args[0]
		lit, ok := literalString(arg)
		if !ok {
			return nil, eh.NewError(arg.ID(), `in_window takes a window name in quotes, such as in_window("business-hours")`)
		}
		i, ok := windowIndex[lit]
		if !ok {
			defined := "none are defined"
			if len(names) > 0 {
				defined = "defined: " + strings.Join(names, ", ")
			}
			return nil, eh.NewError(arg.ID(), fmt.Sprintf("in_window: unknown freeze window %q; %s", lit, defined))
		}
		return eh.NewIdent(windowVar(i)), nil
	}
	opts := []cel.EnvOption{
		cel.Variable("params", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("agent", cel.MapType(cel.StringType, cel.StringType)),
		cel.Variable("task", cel.StringType),
		cel.Variable("now", cel.TimestampType),
		cel.Macros(cel.GlobalMacro("in_window", 1, expand)),
	}
	for _, i := range windowIndex {
		opts = append(opts, cel.Variable(windowVar(i), cel.BoolType))
	}
	return cel.NewEnv(opts...)
}

func literalString(e ast.Expr) (string, bool) {
	if e.Kind() != ast.LiteralKind {
		return "", false
	}
	s, ok := e.AsLiteral().(types.String)
	return string(s), ok
}

// compiledCond is one escalation condition, ready to run.
type compiledCond struct {
	prog cel.Program
	// windows are the policy window indexes the expression reads, so
	// Evaluate computes only those.
	windows []int
}

// compileCond compiles and type-checks expr, and checks that it only names
// declared parameters and agent keys: a typo such as params.regoin would
// otherwise fail only at request time.
func compileCond(env *cel.Env, expr string, params map[string]bool) (*compiledCond, error) {
	checked, iss := env.Compile(expr)
	if iss != nil && iss.Err() != nil {
		e := iss.Errors()[0]
		return nil, fmt.Errorf("%s (at column %d of the expression)", e.Message, e.Location.Column()+1)
	}
	if !checked.OutputType().IsExactType(types.BoolType) {
		return nil, fmt.Errorf("must be a bool expression, got %s", checked.OutputType())
	}
	var problems []string
	var windows []int
	seenWin := map[int]bool{}
	ast.PreOrderVisit(checked.NativeRep().Expr(), ast.NewExprVisitor(func(e ast.Expr) {
		var operand ast.Expr
		var field string
		switch e.Kind() {
		case ast.IdentKind:
			if name := e.AsIdent(); strings.HasPrefix(name, "_w") {
				if i, err := strconv.Atoi(name[2:]); err == nil && !seenWin[i] {
					seenWin[i] = true
					windows = append(windows, i)
				}
			}
			return
		case ast.SelectKind:
			operand, field = e.AsSelect().Operand(), e.AsSelect().FieldName()
		case ast.CallKind:
			c := e.AsCall()
			if c.FunctionName() != operators.Index || len(c.Args()) != 2 {
				return
			}
			lit, ok := literalString(c.Args()[1])
			if !ok {
				return
			}
			operand, field = c.Args()[0], lit
		default:
			return
		}
		if operand.Kind() != ast.IdentKind {
			return
		}
		switch operand.AsIdent() {
		case "params":
			if !params[field] {
				problems = append(problems, fmt.Sprintf("params.%s is not a parameter of this template", field))
			}
		case "agent":
			if !agentKeys[field] {
				problems = append(problems, fmt.Sprintf("agent.%s does not exist; agent has id and owner", field))
			}
		}
	}))
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s", problems[0])
	}
	sort.Ints(windows)
	prog, err := env.Program(checked, cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, err
	}
	return &compiledCond{prog: prog, windows: windows}, nil
}

// activation feeds one evaluation's values to CEL without building a map
// per request.
type activation struct {
	params ref.Val
	agent  ref.Val
	task   types.String
	now    types.Timestamp
	ev     *evaluation // resolves in_window variables, cached per evaluation
}

func newActivation(ev *evaluation, params, agent map[string]string, task string, now time.Time) *activation {
	return &activation{
		params: types.NewStringStringMap(types.DefaultTypeAdapter, params),
		agent:  types.NewStringStringMap(types.DefaultTypeAdapter, agent),
		task:   types.String(task),
		now:    types.Timestamp{Time: now},
		ev:     ev,
	}
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "params":
		return a.params, true
	case "agent":
		return a.agent, true
	case "task":
		return a.task, true
	case "now":
		return a.now, true
	}
	if strings.HasPrefix(name, "_w") {
		i, err := strconv.Atoi(name[2:])
		if err != nil || i < 0 || i >= len(a.ev.p.windowList) {
			return nil, false
		}
		return types.Bool(a.ev.windowActive(i)), true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }
