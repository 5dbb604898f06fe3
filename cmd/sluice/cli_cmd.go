package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/client"
	"github.com/sluicehq/sluice/internal/errs"
)

// command is one client command: `sluice limits set SCOPE [flags]`.
type command struct {
	path     []string // {"limits", "set"}
	aliases  []string // other words for the last part of path ("clear")
	args     string   // what follows the path: "SCOPE"
	nargs    int      // how many arguments; -1 for any
	summary  string
	about    string // a paragraph after the usage line, or ""
	flags    []flagSpec
	examples []string
	// help replaces the generated help when set (usage report's own text).
	help string
	// formats lists the -o values the command takes beyond table and json.
	formats []string
	// long commands (a flow's run) are not cut off by the client's timeout.
	long bool
	// view is the command's table, when views (output_cmd.go) has none.
	view *view
	// fieldFlags name the flag behind an API field where the names differ
	// ("api_key": "secret-file"); blameFlag finds the others by name.
	fieldFlags map[string]string
	run        func(x *invocation) error
}

// flagSpec is one flag of a command.
type flagSpec struct {
	name  string // as typed, without dashes: "expires-in"
	value string // "NAME", "JSON", …; "" for a boolean flag
	help  string
}

// The flags that resolve a name to an id: --tenant university sends
// tenant_id=ten_…; --tenant-id is accepted as the same flag.
var nameFlags = map[string]string{"tenant": "tenant", "department": "department", "parent": "department", "project": "project", "user": "user"}

// boolFlags take no value (--dry-run), but --stream=false or --stream false
// are read as written.
var boolFlags = map[string]bool{"dry_run": true, "stream": true, "active": true, "read_only": true, "help": true, "h": true}

// invocation is one parsed command line, ready to run.
type invocation struct {
	ctx    context.Context
	c      *client.Client
	cmd    *command
	stdout io.Writer
	stderr io.Writer
	args   []string
	// flags by their API name, '-' written '_'; names resolved to ids.
	flags  map[string]string
	format string // table or json (or a command's own, such as csv)
	// outputFlag is -o as given, "" when not.
	outputFlag string
	names      *resolver
}

// out is where show writes: stdout with the format and the command's
// table view.
func (x *invocation) out() *output {
	v := x.cmd.view
	if v == nil {
		v = views[x.cmd.name()]
	}
	return &output{Writer: x.stdout, format: x.format, names: x.names, ctx: x.ctx, view: v}
}

// show performs a call and prints the answer in the chosen format.
func (x *invocation) show(method, path string, q map[string][]string, body any) error {
	return show(x.ctx, x.c, x.out(), method, path, q, body)
}

// runCLI is the command-line client. tty tells whether stdout is a
// terminal: tables there, JSON elsewhere, unless -o says.
func runCLI(args []string, stdout, stderr io.Writer, getenv func(string) string, tty bool) error {
	line, err := scanArgs(args)
	if err != nil {
		return err
	}
	if len(line.pos) == 0 {
		if line.help {
			fmt.Fprint(stdout, usageText)
			return nil
		}
		return usageError("missing command (run sluice help)")
	}
	cmd, rest, err := findCommand(line.pos, line.help)
	if err != nil {
		return err
	}
	if cmd == nil { // a group's help
		fmt.Fprint(stdout, groupHelp(line.pos))
		return nil
	}
	if line.help {
		fmt.Fprint(stdout, cmd.helpText())
		return nil
	}
	if cmd.nargs >= 0 && len(rest) != cmd.nargs {
		if cmd.nargs == 0 {
			return usageError(fmt.Sprintf("%s takes no arguments, got %q (sluice %s -h)", cmd.name(), rest, cmd.name()))
		}
		return usageError(fmt.Sprintf("%s needs %s (sluice %s -h)", cmd.name(), cmd.args, cmd.name()))
	}
	flags := map[string]string{}
	x := &invocation{cmd: cmd, stdout: stdout, stderr: stderr, args: rest, flags: flags}
	server := getenv("SLUICE_SERVER")
	for _, f := range line.flags {
		name := f.name
		switch name {
		case "server":
			server = f.value
			continue
		case "o", "output":
			x.outputFlag = f.value
			continue
		}
		name, ok := cmd.flag(name)
		if !ok {
			return usageError(fmt.Sprintf("%s: unknown flag --%s (%s)", cmd.name(), dashed(f.name), cmd.flagList()))
		}
		if _, dup := flags[name]; dup {
			return usageError(fmt.Sprintf("%s: --%s given twice", cmd.name(), dashed(name)))
		}
		flags[name] = f.value
	}
	switch x.outputFlag {
	case "":
		x.format = "json"
		if tty {
			x.format = "table"
		}
	case "table", "json":
		x.format = x.outputFlag
	default:
		if !slices.Contains(cmd.formats, x.outputFlag) {
			return usageError(fmt.Sprintf("%s: -o must be %s, not %q", cmd.name(), strings.Join(append([]string{"table", "json"}, cmd.formats...), ", "), x.outputFlag))
		}
		x.format = x.outputFlag
	}
	if server == "" {
		server = "http://127.0.0.1:8080"
	}
	x.c = client.New(server, getenv("SLUICE_API_KEY"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if cmd.long {
		ctx, cancel = context.WithCancel(context.Background())
		x.c.HTTP.Timeout = 0 // a run takes as long as it takes; ^C ends it
	}
	defer cancel()
	x.ctx = ctx
	x.names = &resolver{ctx: ctx, c: x.c, lists: map[string][]named{}}
	if err := checkJSON(x); err != nil {
		return err
	}
	if err := x.resolveFlags(); err != nil {
		return err
	}
	return cmd.blameFlag(cmd.run(x))
}

// blameFlag adds the flag at fault to a server error that names a field:
// field limits.tokens is --limits', tenant_id --tenant's, api_key
// --secret-file's.
func (c *command) blameFlag(err error) error {
	var e *errs.Error
	if !errors.As(err, &e) || e.Field == "" {
		return err
	}
	base, _, _ := strings.Cut(e.Field, ".")
	flag := c.fieldFlags[base]
	if flag == "" {
		for _, name := range []string{base, strings.TrimSuffix(base, "_id")} {
			if c.has(name) {
				flag = dashed(name)
				break
			}
		}
	}
	if flag == "" {
		return err
	}
	return &errs.Error{Code: e.Code, Message: e.Message, Field: e.Field + ", flag --" + flag, Err: e.Err}
}

// resolveFlags turns --tenant/--department/--parent/--project/--user
// names into ids (a name is looked up within --tenant when given), and the
// names in --scope.
func (x *invocation) resolveFlags() error {
	tenant := ""
	if v, ok := x.flags["tenant"]; ok {
		id, err := x.names.id("tenant", "", v, "tenant")
		if err != nil {
			return err
		}
		tenant = id
		delete(x.flags, "tenant")
		x.flags["tenant_id"] = id
	}
	for _, flag := range []string{"department", "parent", "project", "user"} {
		v, ok := x.flags[flag]
		if !ok {
			continue
		}
		id, err := x.names.id(nameFlags[flag], tenant, v, flag)
		if err != nil {
			return err
		}
		delete(x.flags, flag)
		x.flags[flag+"_id"] = id
	}
	if v, ok := x.flags["scope"]; ok {
		s, err := x.names.scope(tenant, v, "scope")
		if err != nil {
			return err
		}
		x.flags["scope"] = s
	}
	return nil
}

// tenantScope is the tenant a positional name is looked up in: --tenant
// (already an id), else none.
func (x *invocation) tenantScope() string { return x.flags["tenant_id"] }

// cmdLine is a command line split into words and flags.
type cmdLine struct {
	pos   []string
	flags []setFlag
	help  bool
}

type setFlag struct{ name, value string } // name without dashes, '-' as '_'

// scanArgs splits args into positional words and flags: --flag value,
// --flag=value, -o json; boolean flags (--dry-run) take no value; -h and
// --help anywhere ask for help.
func scanArgs(args []string) (cmdLine, error) {
	var l cmdLine
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			l.pos = append(l.pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			l.pos = append(l.pos, a)
			continue
		}
		raw, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		name := strings.ReplaceAll(raw, "-", "_")
		if name == "h" || name == "help" {
			l.help = true
			continue
		}
		if boolFlags[name] {
			if !hasVal {
				val = "true"
				if i+1 < len(args) && (args[i+1] == "true" || args[i+1] == "false") {
					i++
					val = args[i]
				}
			}
			if val != "true" && val != "false" {
				return l, usageError(fmt.Sprintf("flag --%s is true or false, not %q", raw, val))
			}
			l.flags = append(l.flags, setFlag{name, val})
			continue
		}
		if !hasVal {
			if i+1 < len(args) && (args[i+1] == "-h" || args[i+1] == "--help") {
				l.help = true
				i++
				continue
			}
			if i+1 >= len(args) {
				if slices.Contains(args, "-h") || slices.Contains(args, "--help") {
					l.help = true
					continue
				}
				return l, usageError(fmt.Sprintf("flag --%s needs a value", raw))
			}
			i++
			val = args[i]
		}
		l.flags = append(l.flags, setFlag{name, val})
	}
	return l, nil
}

// findCommand finds the command the words name, and the words after it.
// With help, a group without its verb (sluice limits -h) returns nil.
func findCommand(pos []string, help bool) (*command, []string, error) {
	var best *command
	n := 0
	for _, c := range commands() {
		if len(c.path) <= n || len(c.path) > len(pos) {
			continue
		}
		if c.matches(pos[:len(c.path)]) {
			best, n = c, len(c.path)
		}
	}
	if best != nil {
		// "sluice usage frob": usage exists, but "frob" looks like a verb
		// of a group; say so rather than "usage takes no arguments".
		return best, pos[n:], nil
	}
	// The longest group the words name: "alerts webhook", else "alerts".
	group := 0
	for i := len(pos); i > 0; i-- {
		if len(groupVerbs(pos[:i])) > 0 {
			group = i
			break
		}
	}
	if group == 0 {
		return nil, nil, usageError(fmt.Sprintf("unknown command %q (run sluice help)", pos[0]))
	}
	name, verbs := strings.Join(pos[:group], " "), groupVerbs(pos[:group])
	if help && len(pos) == group {
		return nil, nil, nil
	}
	if len(pos) == group {
		return nil, nil, usageError(fmt.Sprintf("%s needs a verb: %s (sluice %s -h)", name, strings.Join(verbs, ", "), name))
	}
	return nil, nil, usageError(fmt.Sprintf("unknown verb %q for %s: %s (sluice %s -h)", pos[group], name, strings.Join(verbs, ", "), name))
}

func (c *command) matches(words []string) bool {
	for i, w := range words {
		if w == c.path[i] {
			continue
		}
		if i == len(c.path)-1 && slices.Contains(c.aliases, w) {
			continue
		}
		return false
	}
	return true
}

func (c *command) name() string { return strings.Join(c.path, " ") }

// flag returns the name a command knows a flag by: --tenant-id is --tenant.
func (c *command) flag(name string) (string, bool) {
	if base, ok := strings.CutSuffix(name, "_id"); ok && nameFlags[base] != "" {
		if c.has(base) {
			return base, true
		}
	}
	if name == "file" && c.has("f") {
		return "f", true
	}
	return name, c.has(name)
}

func (c *command) has(name string) bool {
	for _, f := range c.flags {
		if strings.ReplaceAll(f.name, "-", "_") == name {
			return true
		}
	}
	return false
}

func (c *command) flagList() string {
	var names []string
	for _, f := range c.flags {
		names = append(names, "--"+f.name)
	}
	names = append(names, "--server", "-o")
	return "flags: " + strings.Join(names, ", ")
}

func dashed(name string) string { return strings.ReplaceAll(name, "_", "-") }

// helpText is the command's -h: what it does, usage, flags, examples.
func (c *command) helpText() string {
	if c.help != "" {
		return c.help
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sluice %s: %s\n\nUsage:\n  sluice %s", c.name(), c.summary, c.name())
	if c.args != "" {
		b.WriteString(" " + c.args)
	}
	b.WriteString(" [flags]\n")
	if len(c.aliases) > 0 {
		fmt.Fprintf(&b, "  (also: sluice %s %s)\n", strings.Join(c.path[:len(c.path)-1], " "), strings.Join(c.aliases, ", "))
	}
	if c.about != "" {
		b.WriteString("\n" + c.about + "\n")
	}
	b.WriteString("\nFlags:\n")
	rows := [][2]string{}
	for _, f := range c.flags {
		left := "--" + f.name
		if f.name == "f" {
			left = "-f, --file"
		}
		if f.value != "" {
			left += " " + f.value
		}
		rows = append(rows, [2]string{left, f.help})
	}
	formats := "table or json"
	if len(c.formats) > 0 {
		formats = "table, json or " + strings.Join(c.formats, ", ")
	}
	rows = append(rows,
		[2]string{"-o, --output F", formats + " (default: table on a terminal, json otherwise)"},
		[2]string{"--server URL", "the server (default $SLUICE_SERVER or http://127.0.0.1:8080)"},
		[2]string{"-h, --help", "this help"})
	width := 0
	for _, r := range rows {
		width = max(width, len(r[0]))
	}
	for _, r := range rows {
		fmt.Fprintf(&b, "  %-*s  %s\n", width, r[0], r[1])
	}
	b.WriteString("\nExamples:\n")
	for _, e := range c.examples {
		b.WriteString("  " + e + "\n")
	}
	b.WriteString("\nThe API key is read from $SLUICE_API_KEY. See docs/cli.md.\n")
	return b.String()
}

// groupVerbs are the words that follow prefix in the commands under it
// (limits: list, get, set, delete; alerts: webhook, deliveries).
func groupVerbs(prefix []string) []string {
	var out []string
	for _, c := range commands() {
		if len(c.path) > len(prefix) && slices.Equal(c.path[:len(prefix)], prefix) && !slices.Contains(out, c.path[len(prefix)]) {
			out = append(out, c.path[len(prefix)])
		}
	}
	return out
}

// groupHelp is `sluice limits -h` (or `sluice alerts webhook -h`): each
// command under the group, its summary and an example.
func groupHelp(prefix []string) string {
	var b strings.Builder
	group := strings.Join(prefix, " ")
	fmt.Fprintf(&b, "sluice %s: %s\n\nUsage:\n", group, groupSummaries[group])
	var cmds []*command
	for _, c := range commands() {
		if len(c.path) > len(prefix) && slices.Equal(c.path[:len(prefix)], prefix) {
			cmds = append(cmds, c)
		}
	}
	width := 0
	for _, c := range cmds {
		width = max(width, len(c.name()+" "+c.args))
	}
	for _, c := range cmds {
		fmt.Fprintf(&b, "  sluice %-*s  %s\n", width, strings.TrimSpace(c.name()+" "+c.args), c.summary)
	}
	b.WriteString("\nExamples:\n")
	for _, c := range cmds {
		if len(c.examples) > 0 {
			b.WriteString("  " + c.examples[0] + "\n")
		}
	}
	fmt.Fprintf(&b, "\nEach verb has its own help: sluice %s VERB -h. See docs/cli.md.\n", group)
	return b.String()
}

// clientHelp lists the client's commands for sluice help.
func clientHelp() string {
	var b strings.Builder
	seen := map[string]bool{}
	var groups []string
	for _, c := range commands() {
		if !seen[c.path[0]] {
			seen[c.path[0]] = true
			groups = append(groups, c.path[0])
		}
	}
	for _, g := range groups {
		var verbs []string
		single := ""
		for _, c := range commands() {
			if c.path[0] != g {
				continue
			}
			if len(c.path) == 1 {
				single = c.summary
				continue
			}
			if !slices.Contains(verbs, c.path[1]) {
				verbs = append(verbs, c.path[1])
			}
		}
		left := g
		if len(verbs) > 0 && single == "" {
			left += " " + strings.Join(verbs, "|")
		} else if len(verbs) > 0 {
			left += " [" + strings.Join(verbs, "|") + "]"
		}
		what := single
		if what == "" {
			what = groupSummaries[g]
		}
		fmt.Fprintf(&b, "  sluice %-44s %s\n", left, what)
	}
	return b.String()
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
