package model

import "fmt"

// MaxProfileRules bounds a profile's rules (inbound and outbound together).
// The bound is etcd's: a record must fit in one request (1.5 MiB by
// default), and a rule with two tags of the longest name is ~560 bytes of
// JSON, so 2,000 such rules still fit with room to spare. Measured here,
// 1,000 rules are programmed in one pass and cost no more per rule than 100
// (docs/upgrades-limits.md).
const MaxProfileRules = 2000

// CheckRuleCount refuses a profile with more rules than MaxProfileRules,
// saying how to stay under it.
func (p *Profile) CheckRuleCount() error {
	if n := len(p.Inbound) + len(p.Outbound); n > MaxProfileRules {
		return fmt.Errorf("profile %s would have %d rules; at most %d fit in one etcd record: split the rules over several profiles (an endpoint may carry many)",
			p.Name, n, MaxProfileRules)
	}
	return nil
}
