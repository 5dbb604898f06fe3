package flow_test

import (
	"slices"
	"testing"

	"github.com/sluicehq/sluice/internal/flow"
)

func TestParamHelpers(t *testing.T) {
	tests := []struct {
		value   any
		str     string
		i       int
		iOK     bool
		f       float64
		fOK     bool
		b, bOK  bool
		empty   bool
		strings []string
	}{
		{value: nil, str: "", empty: true},
		{value: "", str: "", empty: true},
		{value: "hello", str: "hello", strings: []string{"hello"}},
		{value: " 42 ", str: " 42 ", i: 42, iOK: true, f: 42, fOK: true, strings: []string{" 42 "}},
		{value: "0.5", str: "0.5", f: 0.5, fOK: true, strings: []string{"0.5"}},
		{value: "TRUE", str: "TRUE", b: true, bOK: true, strings: []string{"TRUE"}},
		{value: 256.0, str: "256", i: 256, iOK: true, f: 256, fOK: true},
		{value: 0.1, str: "0.1", f: 0.1, fOK: true},
		{value: 1e300, str: "1e+300", f: 1e300, fOK: true},
		{value: 2.5, str: "2.5", f: 2.5, fOK: true},
		{value: true, str: "true", b: true, bOK: true},
		{value: false, str: "false", bOK: true},
		{value: []any{}, str: "[]", empty: true},
		{value: []any{"a", "", 3.0, "b"}, str: `["a","",3,"b"]`, strings: []string{"a", "b"}},
		{value: map[string]any{}, str: "{}", empty: true},
		{value: map[string]any{"k": "v"}, str: `{"k":"v"}`},
	}
	for _, tt := range tests {
		p := flow.Param{Value: tt.value}
		if got := p.String(); got != tt.str {
			t.Errorf("Param{%#v}.String() = %q, want %q", tt.value, got, tt.str)
		}
		if got, ok := p.Int(); got != tt.i || ok != tt.iOK {
			t.Errorf("Param{%#v}.Int() = %d, %v; want %d, %v", tt.value, got, ok, tt.i, tt.iOK)
		}
		if got, ok := p.Float(); got != tt.f || ok != tt.fOK {
			t.Errorf("Param{%#v}.Float() = %v, %v; want %v, %v", tt.value, got, ok, tt.f, tt.fOK)
		}
		if got, ok := p.Bool(); got != tt.b || ok != tt.bOK {
			t.Errorf("Param{%#v}.Bool() = %v, %v; want %v, %v", tt.value, got, ok, tt.b, tt.bOK)
		}
		if got := p.Empty(); got != tt.empty {
			t.Errorf("Param{%#v}.Empty() = %v, want %v", tt.value, got, tt.empty)
		}
		if got := p.Strings(); !slices.Equal(got, tt.strings) {
			t.Errorf("Param{%#v}.Strings() = %q, want %q", tt.value, got, tt.strings)
		}
	}
}

func TestNodeParamAbsent(t *testing.T) {
	var n flow.Node // nil Params
	if p := n.Param("missing"); !p.Empty() || p.String() != "" {
		t.Errorf("absent param = %+v, want the zero Param", p)
	}
	if vars, err := n.PromptVariables(); vars != nil || err != nil {
		t.Errorf("PromptVariables of a non-prompt = %q, %v; want nil, nil", vars, err)
	}
}
