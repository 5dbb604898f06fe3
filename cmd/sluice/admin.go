package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/client"
)

// resource describes one administrable collection for the CLI: its path and
// the fields its create/update calls accept (strings in the API, but for
// the JSON objects of jsonFields).
type resource struct {
	path   string
	fields []string
}

// jsonFields are fields whose flag value is JSON, sent as is: a limits
// object ({"requests":"10/min","models":["gpt-4o-mini"]}).
var jsonFields = map[string]bool{"limits": true, "guaranteed": true}

// limitsSetFields are the flags of sluice limits set.
var limitsSetFields = []string{"plan", "limits", "guaranteed"}

var resources = map[string]resource{
	"tenants":     {"/api/v1/admin/tenants", []string{"name", "display_name", "timezone"}},
	"departments": {"/api/v1/admin/departments", []string{"tenant_id", "parent_id", "name", "display_name"}},
	"projects":    {"/api/v1/admin/projects", []string{"tenant_id", "department_id", "name", "display_name"}},
	"users":       {"/api/v1/admin/users", []string{"tenant_id", "name", "display_name", "email", "role"}},
	"keys":        {"/api/v1/admin/keys", []string{"user_id", "project_id", "name", "expires_at", "expires_in", "plan", "limits"}},
	"memberships": {"/api/v1/admin/memberships", []string{"user_id", "project_id"}},
	"audit":       {"/api/v1/admin/audit", nil},
	"plans":       {"/api/v1/admin/plans", nil},
	"grants":      {"/api/v1/admin/grants", nil},
}

var listFilters = []string{"tenant_id", "parent_id", "department_id", "project_id", "user_id", "root", "limit", "after"}

// clientArgs splits "--server URL" and "--name-like value" flags from
// positional arguments. Flag names use '-' or '_' interchangeably.
func clientArgs(args []string) (flags map[string]string, pos []string, err error) {
	flags = map[string]string{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if name == "dry-run" && !hasVal {
			flags["dry_run"] = "true"
			continue
		}
		if !hasVal {
			if i+1 >= len(args) {
				return nil, nil, usageError(fmt.Sprintf("flag --%s needs a value", name))
			}
			i++
			val = args[i]
		}
		flags[strings.ReplaceAll(name, "-", "_")] = val
	}
	return flags, pos, nil
}

func runClient(args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	if usageReportHelp(args, stdout) {
		return nil
	}
	flags, pos, err := clientArgs(args)
	if err != nil {
		return err
	}
	server := flags["server"]
	delete(flags, "server")
	if server == "" {
		server = getenv("SLUICE_SERVER")
	}
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	c := client.New(server, getenv("SLUICE_API_KEY"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	if len(pos) == 0 {
		return usageError("missing command (run sluice help)")
	}
	switch pos[0] {
	case "whoami":
		return show(ctx, c, stdout, http.MethodGet, "/api/v1/me", nil, nil)
	case "usage":
		if len(pos) > 1 && pos[1] == "keys" {
			return keySpend(ctx, c, stdout, flags)
		}
		if len(pos) > 1 && pos[1] == "report" {
			return usageReport(ctx, c, stdout, pos[2:], flags)
		}
		q := url.Values{}
		for k, v := range flags {
			if k != "scope" && k != "user_id" && k != "project_id" {
				return usageError(fmt.Sprintf("usage: unknown flag --%s (flags: --scope, --user-id, --project-id)", k))
			}
			q.Set(k, v)
		}
		return show(ctx, c, stdout, http.MethodGet, "/api/v1/usage", q, nil)
	case "apply":
		return apply(ctx, c, flags, stdout, stderr)
	case "limits":
		return limits(ctx, c, stdout, stderr, pos[1:], flags)
	case "requests":
		return requestsCmd(ctx, c, stdout, pos[1:], flags)
	case "export":
		format := flags["format"]
		if format == "" {
			format = "yaml"
		}
		var raw json.RawMessage
		if err := c.Do(ctx, http.MethodGet, "/api/v1/admin/policy", url.Values{"format": {format}}, nil, &raw); err != nil {
			return err
		}
		_, err := stdout.Write(raw)
		return err
	}
	res, ok := resources[pos[0]]
	if !ok {
		return usageError(fmt.Sprintf("unknown command %q (run sluice help)", pos[0]))
	}
	if len(pos) < 2 {
		return usageError(fmt.Sprintf("%s needs a verb (list, get, create, update, delete)", pos[0]))
	}
	verb, rest := pos[1], pos[2:]
	needID := func() (string, error) {
		if len(rest) != 1 {
			return "", usageError(fmt.Sprintf("%s %s needs exactly one id", pos[0], verb))
		}
		return url.PathEscape(rest[0]), nil
	}
	switch verb {
	case "list":
		q := url.Values{}
		for k, v := range flags {
			if !contains(listFilters, k) {
				return usageError(fmt.Sprintf("%s list: unknown flag --%s (filters: %s)", pos[0], k, strings.Join(listFilters, ", ")))
			}
			q.Set(k, v)
		}
		return show(ctx, c, stdout, http.MethodGet, res.path, q, nil)
	case "get":
		id, err := needID()
		if err != nil {
			return err
		}
		return show(ctx, c, stdout, http.MethodGet, res.path+"/"+id, nil, nil)
	case "create", "add":
		body, err := bodyOf(pos[0], res, flags)
		if err != nil {
			return err
		}
		return show(ctx, c, stdout, http.MethodPost, res.path, nil, body)
	case "update":
		id, err := needID()
		if err != nil {
			return err
		}
		if pos[0] == "keys" && (flags["plan"] != "" || flags["limits"] != "") {
			return usageError("a key's limits are its scope's: sluice limits set key/" + rest[0] + " --limits JSON")
		}
		body, err := bodyOf(pos[0], res, flags)
		if err != nil {
			return err
		}
		return show(ctx, c, stdout, http.MethodPatch, res.path+"/"+id, nil, body)
	case "delete", "revoke":
		if pos[0] == "memberships" {
			break
		}
		id, err := needID()
		if err != nil {
			return err
		}
		if err := show(ctx, c, stdout, http.MethodDelete, res.path+"/"+id, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "%s %s: done\n", pos[0], rest[0])
		return nil
	case "remove":
	default:
		return usageError(fmt.Sprintf("unknown verb %q for %s", verb, pos[0]))
	}
	// memberships remove --user-id U --project-id P
	if flags["user_id"] == "" || flags["project_id"] == "" {
		return usageError("memberships remove needs --user-id and --project-id")
	}
	path := res.path + "/" + url.PathEscape(flags["user_id"]) + "/" + url.PathEscape(flags["project_id"])
	if err := show(ctx, c, stdout, http.MethodDelete, path, nil, nil); err != nil {
		return err
	}
	fmt.Fprintln(stderr, "membership removed")
	return nil
}

// apply sends a policy file to the server: sluice apply -f FILE [--dry-run].
func apply(ctx context.Context, c *client.Client, flags map[string]string, stdout, stderr io.Writer) error {
	if _, ok := flags["what_if"]; ok {
		return applyWhatIf(ctx, c, flags, stdout)
	}
	path := flags["f"]
	if path == "" {
		path = flags["file"]
	}
	if path == "" {
		return usageError("apply needs -f FILE (or -f - for standard input)")
	}
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(os.Stdin)
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	q := url.Values{}
	dry := flags["dry_run"] == "true"
	if dry {
		q.Set("dry_run", "true")
	}
	var out struct {
		Changes []struct{ Action, Kind, Path, Detail string } `json:"changes"`
	}
	if err := c.DoRaw(ctx, http.MethodPost, "/api/v1/admin/policy", q, "application/yaml", data, &out); err != nil {
		return err
	}
	sym := map[string]string{"create": "+", "update": "~", "set-limits": "~", "add-member": "+"}
	for _, ch := range out.Changes {
		line := fmt.Sprintf("%s %s %s", sym[ch.Action], ch.Kind, ch.Path)
		if ch.Detail != "" {
			line += ": " + ch.Detail
		}
		fmt.Fprintln(stdout, line)
	}
	switch {
	case len(out.Changes) == 0:
		fmt.Fprintln(stderr, "no changes: the server already matches", path)
	case dry:
		fmt.Fprintf(stderr, "%d changes (dry run: nothing applied)\n", len(out.Changes))
	default:
		fmt.Fprintf(stderr, "%d changes applied\n", len(out.Changes))
	}
	return nil
}

func bodyOf(name string, res resource, flags map[string]string) (map[string]any, error) {
	body := map[string]any{}
	for k, v := range flags {
		if !contains(res.fields, k) {
			return nil, usageError(fmt.Sprintf("%s: unknown flag --%s (fields: %s)", name, k, strings.Join(res.fields, ", ")))
		}
		if jsonFields[k] {
			if !json.Valid([]byte(v)) {
				return nil, usageError(fmt.Sprintf("%s: --%s must be a JSON object such as '{\"requests\":\"10/min\"}'", name, k))
			}
			body[k] = json.RawMessage(v)
			continue
		}
		body[k] = v
	}
	return body, nil
}

// limits reads and sets a scope's limits: sluice limits list [--tenant-id T],
// get SCOPE, set SCOPE [--plan P] [--limits JSON] [--guaranteed JSON], clear SCOPE. A scope is
// global, tenant/ID, department/ID, project/ID, user/ID,
// membership/USER@PROJECT or key/ID.
func limits(ctx context.Context, c *client.Client, stdout, stderr io.Writer, args []string, flags map[string]string) error {
	const path = "/api/v1/admin/limits"
	if len(args) == 0 {
		return usageError("limits needs a verb (list, get SCOPE, set SCOPE, clear SCOPE)")
	}
	verb, rest := args[0], args[1:]
	if verb == "list" {
		q := url.Values{}
		for k, v := range flags {
			if k != "tenant_id" {
				return usageError(fmt.Sprintf("limits list: unknown flag --%s (flags: --tenant-id)", k))
			}
			q.Set(k, v)
		}
		return show(ctx, c, stdout, http.MethodGet, path, q, nil)
	}
	if len(rest) != 1 {
		return usageError(fmt.Sprintf("limits %s needs exactly one scope, such as key/key_… or user/usr_…", verb))
	}
	parts := strings.Split(rest[0], "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	scopePath := path + "/" + strings.Join(parts, "/")
	switch verb {
	case "get":
		return show(ctx, c, stdout, http.MethodGet, scopePath, nil, nil)
	case "set":
		body, err := bodyOf("limits set", resource{fields: limitsSetFields}, flags)
		if err != nil {
			return err
		}
		return show(ctx, c, stdout, http.MethodPut, scopePath, nil, body)
	case "clear":
		if err := show(ctx, c, stdout, http.MethodDelete, scopePath, nil, nil); err != nil {
			return err
		}
		fmt.Fprintf(stderr, "limits of %s cleared\n", rest[0])
		return nil
	}
	return usageError(fmt.Sprintf("unknown verb %q for limits (list, get, set, clear)", verb))
}

// keySpend prints spend per API key from the usage ledger: sluice usage
// keys [--tenant-id T] [--user-id U] [--period 2026-05] [--limit N] [--after ID].
func keySpend(ctx context.Context, c *client.Client, stdout io.Writer, flags map[string]string) error {
	q := url.Values{}
	for k, v := range flags {
		switch k {
		case "tenant_id", "user_id", "period", "limit", "after":
			q.Set(k, v)
		default:
			return usageError(fmt.Sprintf("usage keys: unknown flag --%s (flags: --tenant-id, --user-id, --period, --limit, --after)", k))
		}
	}
	return show(ctx, c, stdout, http.MethodGet, "/api/v1/admin/usage/keys", q, nil)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// show performs a call and prints the JSON response, indented.
func show(ctx context.Context, c *client.Client, w io.Writer, method, path string, q url.Values, body any) error {
	var raw json.RawMessage
	if err := c.Do(ctx, method, path, q, body, &raw); err != nil {
		return err
	}
	if len(raw) == 0 {
		return nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		_, err = w.Write(raw)
		return err
	}
	out, _ := json.MarshalIndent(v, "", "  ")
	_, err := fmt.Fprintf(w, "%s\n", out)
	return err
}
