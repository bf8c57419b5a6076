package broker

import (
	"cmp"
	"fmt"
	"strings"

	"github.com/latchbroker/latch/templates"
)

// Action is what a caller asks to do, as far as who may do it goes.
type Action string

const (
	// ActionAgent is an agent's own request: credentials, explain,
	// renew, release, its own approvals. Any verified identity but the
	// admin socket; the policy then decides what the agent may have.
	ActionAgent Action = "agent"
	// ActionRead lists and shows leases, agents, approvals, audit, report.
	ActionRead Action = "read"
	// ActionStop revokes, pauses, quarantines and starts a freeze.
	ActionStop Action = "stop"
	// ActionApprove approves a pending request.
	ActionApprove Action = "approve"
	// ActionDeny denies a pending request.
	ActionDeny Action = "deny"
	// ActionReopen resumes an agent and ends a global freeze: undoing a
	// stop needs a person with the admin role.
	ActionReopen Action = "reopen"
	// ActionIdentified is open to any verified identity (whoami).
	ActionIdentified Action = "identified"
)

// roleFor is the role each operator action needs; admin holds them all.
var roleFor = map[Action]templates.Role{
	ActionRead:    templates.RoleViewer,
	ActionStop:    templates.RoleRevoker,
	ActionApprove: templates.RoleApprover,
	ActionDeny:    templates.RoleApprover,
	ActionReopen:  templates.RoleAdmin,
}

// ReadsApprovals reports whether op may read every approval, not only its
// own: viewers, and approvers (who must see what they are asked to
// approve), and admins.
func ReadsApprovals(op *templates.Operator) bool {
	return op.Has(templates.RoleViewer) || op.Has(templates.RoleApprover) || op.Has(templates.RoleAdmin)
}

// Authorize decides whether actor may take action under policy p: the one
// place that says who may do what, used by the HTTP API for every route
// and by the Service for the actions it guards itself. The admin socket
// (AdminSocketActor) is a break-glass operator: it may read and stop,
// and deny a request, but never approve nor reopen — granting and undoing
// a stop are always attributable to a person.
//
// what names the route or operation in messages ("POST /v1/revoke").
//
// Errors: EFORBIDDEN naming what is missing, with the reason code
// (admin_socket_approval, admin_socket_reopen, agent_via_admin_socket,
// missing_role:ROLE) in Reasons.
func Authorize(p *templates.Policy, actor string, action Action, what string) error {
	return authorize(p, actor, nil, action, what)
}

// AuthorizePerson is Authorize for a person signed in through the OpenID
// Provider: their roles are those of every operators: entry naming them.
func AuthorizePerson(p *templates.Policy, person *Person, action Action, what string) error {
	if action == ActionAgent {
		return forbidden("person_as_agent", "a person is an operator, never an agent: agents call "+cmp.Or(what, "this")+" with their SVID")
	}
	return authorize(p, person.ID(), person, action, what)
}

func authorize(p *templates.Policy, actor string, person *Person, action Action, what string) error {
	if what == "" {
		what = string(action)
	}
	adminSocket := actor == AdminSocketActor
	switch {
	case action == ActionIdentified:
		return nil
	case action == ActionAgent && adminSocket:
		return forbidden("agent_via_admin_socket", "the admin socket is for operators: agents call "+what+" with their SVID")
	case action == ActionAgent:
		return nil
	case action == ActionApprove && adminSocket:
		return forbidden("admin_socket_approval", "the admin socket may never approve: an approval must be attributable to a person")
	case action == ActionReopen && adminSocket:
		return forbidden("admin_socket_reopen", "the admin socket can never resume an agent or end a freeze: an operator with the admin role must, with a reason")
	case adminSocket:
		return nil
	}
	role, ok := roleFor[action]
	if !ok {
		return forbidden("unknown_action", what+" is not open to anyone")
	}
	op, isOperator := p.Operator(actor)
	if person != nil {
		op, isOperator = p.Person(actor, person.Subject, person.Email, person.Groups)
	}
	if isOperator && (op.Has(role) || op.Has(templates.RoleAdmin)) {
		return nil
	}
	reason := "missing_role:" + string(role)
	if !isOperator {
		return forbidden(reason, fmt.Sprintf("%s is not an operator: %s needs the %s role", actor, what, role))
	}
	roles := make([]string, len(op.Roles))
	for i, r := range op.Roles {
		roles[i] = string(r)
	}
	return forbidden(reason, fmt.Sprintf("%s lacks the %s role that %s needs (it has: %s)", actor, role, what, strings.Join(roles, ", ")))
}

func forbidden(reason, msg string) *Error {
	return &Error{Code: EFORBIDDEN, Message: msg, Reasons: []string{reason}}
}
