# The example agents' policy: refunds (the triage agent's refund.issue) up to 100 USD go through,
# above 100 a person must approve them, above 1000 they are denied. Every other action is allowed.
# The runtime asks for data.tachograph.decision before every tool call and change (docs/policies.md).
package tachograph

approval_above := 100

deny_above := 1000

default decision := {"decision": "allow", "reason": "no policy restricts this action"}

# the amount of a refund.issue call (the tool's arguments carry it as a decimal string)
refund := to_number(input.arguments.amount) if {
	input.kind == "tool"
	input.tool == "refund.issue"
}

decision := {"decision": "deny", "reason": "a refund without a numeric amount"} if {
	input.kind == "tool"
	input.tool == "refund.issue"
	not refund
}

decision := {
	"decision": "deny",
	"reason": sprintf("refund of %v USD is above the limit of %v", [refund, deny_above]),
} if refund > deny_above

decision := {
	"decision": "require_approval",
	"reason": sprintf("refund of %v USD is above %v: a person must approve it", [refund, approval_above]),
} if {
	refund > approval_above
	refund <= deny_above
}

decision := {
	"decision": "allow",
	"reason": sprintf("refund of %v USD is within %v", [refund, approval_above]),
} if refund <= approval_above
