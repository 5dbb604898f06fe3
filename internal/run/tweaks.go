package run

import (
	"slices"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

// CheckTweaks refuses tweaks that name a node the flow does not have, by id
// or display name: LangFlow drops them silently, so a misspelt id would
// run the flow unchanged and look like success. The error is
// errs.Unprocessable (422) with Field "tweaks.<key>" for the first unknown
// key in name order, and its message names every one.
func CheckTweaks(f *flow.Flow, tweaks map[string]map[string]any) error {
	var unknown []string
	for key := range tweaks {
		if !slices.ContainsFunc(f.Nodes, func(n *flow.Node) bool { return n != nil && (n.ID == key || n.DisplayName == key && key != "") }) {
			unknown = append(unknown, key)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	quoted := make([]string, len(unknown))
	for i, k := range unknown {
		quoted[i] = `"` + k + `"`
	}
	what := "a node"
	if len(unknown) > 1 {
		what = "nodes"
	}
	return errs.Field(errs.Unprocessable, "tweaks."+unknown[0],
		"tweaks name %s the flow does not have: %s (a tweak's key is a node's id or display name)", what, strings.Join(quoted, ", "))
}
