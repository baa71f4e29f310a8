# Refunds: up to 100 are allowed, above 100 need a person's approval, above 1000 are denied.
# Every other action is allowed. The runtime reads data.tachograph.decision.
package tachograph

approval_above := 100

deny_above := 1000

default decision := {"decision": "allow", "reason": "no policy restricts this action"}

decision := {
	"decision": "deny",
	"reason": sprintf("refund of %v is above the limit of %v", [input.arguments.amount, deny_above]),
} if {
	input.tool == "refund"
	input.arguments.amount > deny_above
}

decision := {
	"decision": "require_approval",
	"reason": sprintf("refund of %v is above %v: a person must approve it", [input.arguments.amount, approval_above]),
} if {
	input.tool == "refund"
	input.arguments.amount > approval_above
	input.arguments.amount <= deny_above
}

decision := {
	"decision": "allow",
	"reason": sprintf("refund of %v is within %v", [input.arguments.amount, approval_above]),
} if {
	input.tool == "refund"
	input.arguments.amount <= approval_above
}
