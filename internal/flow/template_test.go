package flow_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/flow"
)

func TestVariables(t *testing.T) {
	tests := []struct {
		tmpl string
		want []string
	}{
		{"", nil},
		{"no variables", nil},
		{"{a}", []string{"a"}},
		{"{a} {b} {a}", []string{"a", "b"}},
		{"请解释以下术语：{term}", []string{"term"}},
		{"{术语}和{用户_2}", []string{"术语", "用户_2"}},
		{"{{literal}} {real}", []string{"real"}},
		{"{{{x}}}", []string{"x"}},
		{"}}{{", nil},
		{"{_private} {café} {x1}", []string{"_private", "café", "x1"}},
		{"[concept_evaluation] (1) <tag>", nil},
	}
	for _, tt := range tests {
		got, err := flow.Variables(tt.tmpl)
		if err != nil {
			t.Errorf("Variables(%q): %v", tt.tmpl, err)
			continue
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("Variables(%q) = %q, want %q", tt.tmpl, got, tt.want)
		}
	}
}

func TestTemplateErrors(t *testing.T) {
	tests := []struct {
		tmpl   string
		offset int
		v      string
	}{
		{"Hello {name", 6, ""},
		{"{", 0, ""},
		{"a }", 2, ""},
		{"{}", 0, ""},
		{"{0}", 0, "0"},
		{"{1abc}", 0, "1abc"},
		{"{a.b}", 0, "a.b"},
		{"{a[0]}", 0, "a[0]"},
		{"{a:>10}", 0, "a:>10"},
		{"{a!r}", 0, "a!r"},
		{"{ a }", 0, " a "},
		{"ok {a{b}}", 3, ""},
		{"{x}}", 3, ""},
		{"中文{", len("中文"), ""},
		{"{\xff}", 0, "\xff"},
	}
	for _, tt := range tests {
		_, err := flow.Variables(tt.tmpl)
		var te *flow.TemplateError
		if !errors.As(err, &te) {
			t.Errorf("Variables(%q) error = %v, want a *TemplateError", tt.tmpl, err)
			continue
		}
		if te.Offset != tt.offset || te.Var != tt.v {
			t.Errorf("Variables(%q): Offset, Var = %d, %q; want %d, %q (%v)", tt.tmpl, te.Offset, te.Var, tt.offset, tt.v, err)
		}
		if _, rerr := flow.Render(tt.tmpl, map[string]string{"a": "x", "name": "x"}); rerr == nil {
			t.Errorf("Render(%q) succeeded, want an error", tt.tmpl)
		}
		if got := errs.CodeOf(err); got != errs.Unprocessable {
			t.Errorf("errs.CodeOf = %q, want %q", got, errs.Unprocessable)
		}
	}
}

func TestRender(t *testing.T) {
	tests := []struct {
		tmpl string
		vars map[string]string
		want string
	}{
		{"", nil, ""},
		{"plain", nil, "plain"},
		{"请解释以下术语：{term}", map[string]string{"term": "熵"}, "请解释以下术语：熵"},
		{"{a}{b}{a}", map[string]string{"a": "1", "b": "2"}, "121"},
		{"{{a}} is {a}", map[string]string{"a": "x"}, "{a} is x"},
		{"{{{a}}}", map[string]string{"a": "x"}, "{x}"},
		{"json: {{\"k\": {v}}}", map[string]string{"v": "1"}, `json: {"k": 1}`},
		{"{a}", map[string]string{"a": ""}, ""},
		// Values are not templates: their braces stay as they are.
		{"{a}", map[string]string{"a": "{b} }}"}, "{b} }}"},
		{"x\xffy {a}", map[string]string{"a": "z"}, "x\xffy z"},
	}
	for _, tt := range tests {
		got, err := flow.Render(tt.tmpl, tt.vars)
		if err != nil {
			t.Errorf("Render(%q): %v", tt.tmpl, err)
			continue
		}
		if got != tt.want {
			t.Errorf("Render(%q) = %q, want %q", tt.tmpl, got, tt.want)
		}
	}
}

func TestRenderMissingVariable(t *testing.T) {
	_, err := flow.Render("Hi {name}, about {topic}", map[string]string{"name": "Ana"})
	var te *flow.TemplateError
	if !errors.As(err, &te) {
		t.Fatalf("error = %v, want a *TemplateError", err)
	}
	if te.Var != "topic" || te.Offset != 17 {
		t.Errorf("Var, Offset = %q, %d; want topic, 17", te.Var, te.Offset)
	}
}

func TestEscape(t *testing.T) {
	for _, s := range []string{"", "plain", "{a}", "}{", "{{x}}", "中{文}", "\xff{"} {
		e := flow.Escape(s)
		vars, err := flow.Variables(e)
		if err != nil || len(vars) != 0 {
			t.Errorf("Variables(Escape(%q)) = %q, %v; want none", s, vars, err)
		}
		got, err := flow.Render(e, nil)
		if err != nil || got != s {
			t.Errorf("Render(Escape(%q)) = %q, %v; want the input back", s, got, err)
		}
	}
}
