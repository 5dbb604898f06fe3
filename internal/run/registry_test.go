package run

import (
	"slices"
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

// TestOneComponentRegistry: the catalog (flow.Components: inputs,
// outputs, what a component is), the runners and the tool builders name
// the same components. A type declared but not implemented, implemented
// but not declared, or marked a tool without a tool (or the reverse)
// fails here rather than at a user's run.
func TestOneComponentRegistry(t *testing.T) {
	for typ, c := range flow.Components {
		if c.IsCustom {
			if _, ok := runners[typ]; ok {
				t.Errorf("%s is user code: it must not have a native runner", typ)
			}
			continue
		}
		if _, ok := runners[typ]; !ok {
			t.Errorf("%s is in the catalog but has no runner", typ)
		}
		_, hasTool := toolBuilders[typ]
		switch {
		case c.IsTool && !hasTool && typ != TypeMCPTools:
			t.Errorf("%s is marked a tool in the catalog but builds none", typ)
		case !c.IsTool && hasTool:
			t.Errorf("%s builds a tool but the catalog does not mark it one (agents could not take it)", typ)
		}
	}
	for typ := range runners {
		if flow.Components[typ] == nil {
			t.Errorf("runner %s is not in the catalog: validation would refuse its nodes", typ)
		}
	}
	for typ := range toolBuilders {
		if flow.Components[typ] == nil {
			t.Errorf("tool %s is not in the catalog", typ)
		}
	}
	// Every vendor type the validator refuses is outside the registry,
	// aliases included.
	for _, typ := range flow.VendorTypes() {
		if flow.Lookup(typ) != nil || runners[typ] != nil {
			t.Errorf("%s is both refused as a vendor component and implemented", typ)
		}
	}
	if !slices.ContainsFunc(flow.VendorTypes(), func(s string) bool { return s == "AstraDB" }) {
		t.Error("the vendor list lost AstraDB")
	}
}
