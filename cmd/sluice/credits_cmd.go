package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"text/tabwriter"
	"time"
)

// creditCommands are prepaid credit: a scope's balance and history,
// top-ups by admins, and single-use redeem codes (docs/quota-requests.md).
func creditCommands(add func(*command)) {
	fCreditScope := flagSpec{"scope", "SCOPE", "whose balance: user/NAME, project/NAME, … (default: yours)"}
	fTokens := flagSpec{"tokens", "N", "tokens of credit"}
	fCost := flagSpec{"cost-usd", "X", "US dollars of credit, such as 12.50"}
	fNote := flagSpec{"note", "TEXT", "why (kept with the entry and in the audit log)"}
	// amount is the body's tokens, cost_usd and note from the flags; at
	// least one of --tokens and --cost-usd.
	amount := func(x *invocation) (map[string]any, error) {
		b := map[string]any{}
		_, hasTokens := x.flags["tokens"]
		_, hasCost := x.flags["cost_usd"]
		if !hasTokens && !hasCost {
			return nil, usageError(fmt.Sprintf("%s needs --tokens N or --cost-usd X (or both) (sluice %s -h)", x.cmd.name(), x.cmd.name()))
		}
		if hasTokens {
			n, err := wholeFlag(x, "tokens")
			if err != nil {
				return nil, err
			}
			b["tokens"] = n
		}
		if hasCost {
			f, err := numberFlag(x, "cost-usd", "12.50")
			if err != nil {
				return nil, err
			}
			b["cost_usd"] = f
		}
		if v, ok := x.flags["note"]; ok {
			b["note"] = v
		}
		return b, nil
	}

	entryCols := []column{field("AT", "at"), field("KIND", "kind"), field("TOKENS", "tokens"), field("COST USD", "cost_usd"),
		field("BALANCE TOKENS", "balance_tokens"), field("BALANCE USD", "balance_cost_usd"), field("NOTE", "note"),
		ref("BY", "actor_user_id", "user"), field("ID", "id")}
	entryView := &view{object: func(o *output, m map[string]any) error {
		tw := tabwriter.NewWriter(o, 0, 4, 2, ' ', 0)
		fmt.Fprintf(tw, "scope\t%s\nkind\t%s\ntokens\t%s\ncost_usd\t%s\nbalance\t%s tokens, %s USD\nid\t%s\n", o.names.scopeName(str(m, "scope")),
			str(m, "kind"), str(m, "tokens"), str(m, "cost_usd"), str(m, "balance_tokens"), str(m, "balance_cost_usd"), str(m, "id"))
		return tw.Flush()
	}}
	add(&command{path: []string{"credits", "show"}, aliases: []string{"get"}, nargs: 0, summary: "a scope's credit balance and its history",
		about: "Credit is drawn when a window's limit is spent (docs/quota-requests.md). History is oldest first, a page at a time.",
		flags: []flagSpec{fCreditScope, fTenant, fLimit, {"after", "ID", "the page of history after this entry (the last answer's next)"}},
		view: &view{object: func(o *output, m map[string]any) error {
			tw := tabwriter.NewWriter(o, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "scope\t%s\ntokens\t%s\ncost_usd\t%s\nupdated\t%s\n", o.names.scopeName(str(m, "scope")), str(m, "tokens"),
				str(m, "cost_usd"), str(m, "updated_at"))
			if err := tw.Flush(); err != nil {
				return err
			}
			entries, _ := m["entries"].([]any)
			fmt.Fprintln(o, "\nHISTORY:")
			if err := o.table(entries, entryCols); err != nil {
				return err
			}
			if next := str(m, "next"); next != "" {
				fmt.Fprintf(o, "(more: --after %s)\n", next)
			}
			return nil
		}},
		examples: []string{"sluice credits show", "sluice credits show --scope project/group-1 --tenant university -o json"},
		run: func(x *invocation) error {
			q := query(x.flags)
			q.Del("tenant_id") // it only narrowed the names in --scope
			return x.show(http.MethodGet, "/api/v1/credits", q, nil)
		}})
	add(&command{path: []string{"credits", "topup"}, args: "SCOPE", nargs: 1, summary: "add credit to a scope (admins)", about: scopeAbout,
		flags: []flagSpec{fTenant, fTokens, fCost, fNote}, view: entryView,
		examples: []string{`sluice credits topup project/group-1 --tenant university --tokens 1000000 --note "grant 2026-17"`,
			"sluice credits topup user/alice --tenant university --cost-usd 20"},
		run: func(x *invocation) error {
			s, err := x.names.scope(x.tenantScope(), x.args[0], "")
			if err != nil {
				return err
			}
			b, err := amount(x)
			if err != nil {
				return err
			}
			return x.show(http.MethodPost, "/api/v1/admin/credits/"+scopeSegments(s)+"/topup", nil, b)
		}})
	add(&command{path: []string{"credits", "redeem"}, nargs: 0, summary: "redeem a code: its credit goes to its scope, or to you",
		about: `The code is read from --code-file, or from standard input (piped, or pasted: it is not read from
a terminal, where it would show). A code works once.`,
		flags: []flagSpec{{"code-file", "FILE", "a file holding the code (default: standard input)"}}, view: entryView,
		fieldFlags: map[string]string{"code": "code-file"},
		examples:   []string{"sluice credits redeem --code-file code.txt", "sluice credits redeem < code.txt"},
		run: func(x *invocation) error {
			code, err := readSecret(x, "code-file")
			if err != nil {
				return err
			}
			return x.show(http.MethodPost, "/api/v1/credits/redeem", nil, map[string]string{"code": code})
		}})

	const cpath = "/api/v1/admin/credit-codes"
	add(&command{path: []string{"credit-codes", "list"}, nargs: 0, summary: "a tenant's redeem codes (their prefixes; never the codes)",
		flags: []flagSpec{{"tenant", "NAME", "the tenant, by name or id (default: yours)"}, fLimit, fAfter},
		view: &view{columns: []column{field("PREFIX", "prefix"), field("TOKENS", "tokens"), field("COST USD", "cost_usd"), scopeCol("scope"),
			{"STATUS", codeStatus}, field("EXPIRES", "expires_at"), ref("REDEEMED BY", "redeemed_by", "user"), field("NOTE", "note"), field("ID", "id")}},
		examples: []string{"sluice credit-codes list --tenant university"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, cpath, query(x.flags), nil) }})
	add(&command{path: []string{"credit-codes", "create"}, nargs: 0, summary: "make single-use redeem codes; they are printed this once",
		about: `Sluice keeps only a hash of each code: this answer is the only place the codes are shown.
Without --scope a code credits whoever redeems it (their user scope).`,
		flags: []flagSpec{{"tenant", "NAME", "the tenant, by name or id (default: yours)"},
			{"scope", "SCOPE", "the scope every code credits (default: the redeemer)"}, fTokens, fCost, fNote,
			{"count", "N", "how many codes (1–100, default 1)"},
			{"expires-in", "DURATION", "unused codes stop working after this long: 720h, 30d"}, {"expires-at", "TIME", "… at this time (RFC 3339)"}},
		view: &view{columns: []column{field("CODE", "code"), field("TOKENS", "tokens"), field("COST USD", "cost_usd"), scopeCol("scope"),
			field("EXPIRES", "expires_at"), field("ID", "id")}},
		examples: []string{`sluice credit-codes create --tenant university --tokens 50000 --count 30 --expires-in 30d --note "workshop"`,
			"sluice credit-codes create --tenant university --scope project/group-1 --cost-usd 10 -o json > codes.json"},
		run: func(x *invocation) error {
			b, err := amount(x)
			if err != nil {
				return err
			}
			for _, k := range []string{"tenant_id", "scope"} {
				if v := x.flags[k]; v != "" {
					b[k] = v
				}
			}
			if _, ok := x.flags["count"]; ok {
				n, err := wholeFlag(x, "count")
				if err != nil {
					return err
				}
				b["count"] = n
			}
			in, at := x.flags["expires_in"], x.flags["expires_at"]
			if in != "" && at != "" {
				return usageError("credit-codes create: --expires-in or --expires-at, not both")
			}
			if in != "" {
				d, err := parseDays(in)
				if err != nil || d <= 0 {
					return usageError(fmt.Sprintf("credit-codes create: --expires-in must be a duration such as 720h or 30d, not %q", in))
				}
				at = time.Now().Add(d).UTC().Format(time.RFC3339)
			}
			if at != "" {
				b["expires_at"] = at
			}
			raw, err := x.showing(http.MethodPost, cpath, nil, b)
			if err != nil {
				return err
			}
			var out struct {
				Items []json.RawMessage `json:"items"`
			}
			_ = json.Unmarshal(raw, &out)
			fmt.Fprintf(x.stderr, "%d redeem codes: each is shown this once (Sluice keeps only a hash) and works once\n", len(out.Items))
			return nil
		}})
}

func codeStatus(_ *output, m map[string]any) string {
	if m["redeemed_at"] != nil {
		return "redeemed"
	}
	if e, err := time.Parse(time.RFC3339Nano, str(m, "expires_at")); err == nil && !e.After(time.Now()) {
		return "expired"
	}
	return "open"
}
