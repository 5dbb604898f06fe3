package run

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/flow"
	"github.com/sluicehq/sluice/internal/policy"
)

// FileStore is the project file storage the File and SaveToFile components
// use: every call names the run's tenant and project.
type FileStore interface {
	Find(ctx context.Context, sc files.Scope, folder, name string) (*files.File, error)
	Get(ctx context.Context, sc files.Scope, id string) (*files.File, error)
	Read(f *files.File) ([]byte, error)
	// MaxFile is files.max_file_bytes: also what one File node may read
	// in all, so that a node naming many files holds no more than one.
	MaxFile() int64
	Put(ctx context.Context, sc files.Scope, folder, name string, naming files.Naming, createdBy string, r io.Reader) (*files.File, error)
}

// maxFilesPerNode bounds the files one File node reads.
const maxFilesPerNode = 100

// textFileTypes are the extensions LangFlow's File component reads as text
// (its TEXT_FILE_TYPES without pdf and docx), and a few more plain-text
// ones.
var textFileTypes = []string{"txt", "md", "mdx", "csv", "json", "yaml", "yml", "xml", "html", "htm", "py", "sh", "sql",
	"js", "ts", "tsx", "log", "tsv", "jsonl", "markdown"}

// parsedFileTypes are what LangFlow reads with document parsers (pypdf,
// python-docx, Docling) or unpacks: Sluice's runtime does not.
var parsedFileTypes = []string{"pdf", "docx", "adoc", "asciidoc", "asc", "bmp", "dotx", "dotm", "docm", "jpg", "jpeg", "png",
	"potx", "ppsx", "pptm", "potm", "ppsm", "pptx", "tiff", "xls", "xlsx", "xhtml", "webp", "zip", "tar", "tgz", "bz2", "gz"}

// fileScope is the run's project storage, or why a node cannot use it.
func (s *state) fileScope(n *flow.Node, field string) (files.Scope, error) {
	// A sandbox worker's job carries no identity: its file store is the
	// server, which scopes every request to the run's project itself.
	sc := files.Scope{TenantID: s.job.Who.TenantID, ProjectID: s.job.Who.ProjectID}
	if s.e.Files == nil {
		return sc, errs.Field(errs.Unprocessable, "nodes."+n.ID+"."+field,
			"node %s (%s): this run has no project file storage (local runs have none)", n.ID, n.Type)
	}
	return sc, nil
}

// filePaths are the files a File node names: its path parameter (a tweak
// or the export's value, one path or a list) and what arrives on its
// file_path input (Data with a file_path field, or a Message's text).
func (s *state) filePaths(n *flow.Node) []string {
	var out []string
	for _, p := range s.param(n, "path").Strings() {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	for _, v := range s.inputs[n.ID]["file_path"] {
		if v.data == nil {
			if t := strings.TrimSpace(v.text); t != "" {
				out = append(out, t)
			}
			continue
		}
		for _, r := range v.data.rows {
			if fp, ok := r.get("file_path"); ok {
				if t, ok := fp.(string); ok && strings.TrimSpace(t) != "" {
					out = append(out, strings.TrimSpace(t))
				}
			}
		}
	}
	return out
}

// lookupFile finds a file of the run's project by the path a flow gives:
// "<folder>/<name>" (a v1 upload's file_path, a v2 file's path), a v2
// file's id, or a bare name uploaded to the running flow. Nothing else is
// read: a path of the server's disk is refused.
func (s *state) lookupFile(ctx context.Context, n *flow.Node, sc files.Scope, p string) (*files.File, error) {
	field := "nodes." + n.ID + ".path"
	if strings.HasPrefix(p, "/") || strings.HasPrefix(p, "~") || strings.Contains(p, `\`) || slices.Contains(strings.Split(p, "/"), "..") ||
		strings.Count(p, "/") > 1 {
		return nil, errs.Field(errs.Unprocessable, field,
			"node %s (File): %q is not a file of this project; reading files from the server's disk is not allowed (name an uploaded file as <flow_id>/<name>, or a v2 file's path or id)", n.ID, p)
	}
	var f *files.File
	var err error
	switch folder, name, ok := strings.Cut(p, "/"); {
	case ok:
		f, err = s.e.Files.Find(ctx, sc, folder, name)
	case strings.HasPrefix(p, "fil_"):
		f, err = s.e.Files.Get(ctx, sc, p)
	case s.job.FlowID != "":
		f, err = s.e.Files.Find(ctx, sc, s.job.FlowID, p)
	default:
		err = errs.E(errs.NotFound, "file not found")
	}
	if errs.Is(err, errs.NotFound) {
		return nil, errs.Field(errs.Unprocessable, field, "node %s (File): no file %q in this project (upload it first: POST /api/v1/files/upload/{flow_id} or POST /api/v2/files)", n.ID, p)
	}
	return f, err
}

// readFile is LangFlow's File (Read File) for text formats: each named
// file of the run's project becomes a Data {file_path, text}; "message"
// joins their texts with the separator, "dataframe" holds one row per
// file, "path" lists their paths.
func (s *state) readFile(ctx context.Context, n *flow.Node) error {
	paths := s.filePaths(n)
	if len(paths) == 0 {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".path",
			"node %s (File) needs a file: upload one (POST /api/v1/files/upload/{flow_id} or POST /api/v2/files) and pass its file_path as the tweak {\"%s\": {\"path\": \"<file_path>\"}}", n.ID, n.ID)
	}
	if len(paths) > maxFilesPerNode {
		return errs.Field(errs.Unprocessable, "nodes."+n.ID+".path", "node %s (File) names %d files, more than %d", n.ID, len(paths), maxFilesPerNode)
	}
	sc, err := s.fileScope(n, "path")
	if err != nil {
		return err
	}
	silent := boolParam(s.param(n, "silent_errors"))
	skipUnsupported := boolParam(s.param(n, "ignore_unsupported_extensions"))
	var rows []row
	var names []string
	var total int64
	for _, p := range paths {
		f, err := s.lookupFile(ctx, n, sc, p)
		if err != nil {
			return err
		}
		ext := strings.TrimPrefix(strings.ToLower(path.Ext(f.Name)), ".")
		switch {
		case slices.Contains(parsedFileTypes, ext):
			return errs.Field(errs.Unprocessable, "nodes."+n.ID+".path",
				"node %s (File): %s is a .%s file, which LangFlow reads with its document parsers (pypdf, python-docx, Docling); Sluice's runtime reads text formats only (%s): run this flow through the LangFlow front (langflow.upstream), or upload the document as text",
				n.ID, f.Name, ext, strings.Join(textFileTypes, ", "))
		case !slices.Contains(textFileTypes, ext):
			if skipUnsupported {
				continue
			}
			return errs.Field(errs.Unprocessable, "nodes."+n.ID+".path", "node %s (File): %s has an unsupported file type %q (text formats: %s)",
				n.ID, f.Name, ext, strings.Join(textFileTypes, ", "))
		}
		if total += f.Size; total > s.e.Files.MaxFile() {
			return errs.Field(errs.TooLarge, "nodes."+n.ID+".path", "node %s (File): the files it names are together larger than %s (files.max_file_bytes)",
				n.ID, policy.Bytes(s.e.Files.MaxFile()))
		}
		b, err := s.e.Files.Read(f)
		if err != nil {
			return err
		}
		text, err := fileText(ext, b)
		if err != nil {
			if silent {
				continue
			}
			return errs.Field(errs.Unprocessable, "nodes."+n.ID+".path", "node %s (File): error loading file %s: %v", n.ID, f.Path(), err)
		}
		rows = append(rows, row{{"file_path", f.Path()}, {"text", text}})
		names = append(names, f.Path())
	}
	sep := s.param(n, "separator").String()
	if sep == "" {
		sep = "\n\n"
	}
	texts := make([]string, len(rows))
	for i, r := range rows {
		texts[i], _ = r[1].value.(string)
	}
	s.setOut(n.ID, "message", value{text: strings.Join(texts, sep)})
	s.setOut(n.ID, "path", value{text: strings.Join(names, "\n")})
	s.setOut(n.ID, "dataframe", dataValue(&table{kind: dataFrame, rows: rows}))
	data := &table{kind: oneData, rows: rows}
	if len(rows) != 1 {
		data.kind = dataList
	}
	if len(rows) == 0 {
		data.rows = []row{{}} // LangFlow's load_files_core: [Data()]
		data.kind = oneData
	}
	s.setOut(n.ID, "data", dataValue(data))
	s.setOut(n.ID, "json", dataValue(data))
	return nil
}

// fileText is a text file's content as LangFlow's parse_text_file_to_data
// gives it: JSON re-serialised compactly (and so checked), the rest as
// written.
func fileText(ext string, b []byte) (string, error) {
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	if !utf8.Valid(b) {
		return "", fmt.Errorf("the file is not UTF-8 text")
	}
	if ext == "json" {
		var out bytes.Buffer
		if err := json.Compact(&out, b); err != nil {
			return "", fmt.Errorf("invalid JSON: %v", err)
		}
		return out.String(), nil
	}
	return string(b), nil
}

func boolParam(p flow.Param) bool {
	b, _ := p.Bool()
	return b
}

// ---- SaveToFile ----

// saveFormats are the formats LangFlow's Write File offers for local
// storage, by input type.
var (
	saveMessageFormats = []string{"txt", "json", "markdown"}
	saveDataFormats    = []string{"csv", "excel", "json", "markdown"}
)

// saveToFile is LangFlow's SaveToFile (Write File) with storage "Local":
// it writes its input (a Message, Data or DataFrame) as a file of the
// run's project (the project's own files, as LangFlow uploads it to the
// user's files), replacing a file of that name, and answers LangFlow's
// confirmation Message.
func (s *state) saveToFile(ctx context.Context, n *flow.Node) error {
	field := func(f string) string { return "nodes." + n.ID + "." + f }
	in, ok := s.in(n, "input")
	if !ok {
		return errs.Field(errs.Unprocessable, field("input"), "node %s (SaveToFile): no input connected", n.ID)
	}
	name := s.text(n, "file_name")
	if name == "" {
		name = s.param(n, "file_path").String()
	}
	if strings.TrimSpace(name) == "" {
		return errs.Field(errs.Unprocessable, field("file_name"), "node %s (SaveToFile): file name must be provided", n.ID)
	}
	if loc := storageLocation(s.param(n, "storage_location")); loc != "" && loc != "Local" {
		return errs.Field(errs.Unprocessable, field("storage_location"),
			"node %s (SaveToFile): storage location %q is not supported by Sluice's runtime, which saves to the project's files (Local); run this flow through the LangFlow front for %s", n.ID, loc, loc)
	}
	kind := "Message"
	if in.data != nil {
		kind = "Data"
		if in.data.kind != oneData {
			kind = "DataFrame"
		}
	}
	format := s.param(n, "local_format").String()
	if format == "" {
		format = s.param(n, "file_format").String()
	}
	if format == "" {
		format = map[string]string{"Message": "json", "Data": "json", "DataFrame": "csv"}[kind]
	}
	allowed := saveDataFormats
	if kind == "Message" {
		allowed = saveMessageFormats
	}
	if !slices.Contains(allowed, format) {
		return errs.Field(errs.Unprocessable, field("local_format"), "node %s (SaveToFile): invalid file format '%s' for %s. Allowed: %s",
			n.ID, format, kind, strings.Join(allowed, ", "))
	}
	if format == "excel" {
		return errs.Field(errs.Unprocessable, field("local_format"),
			"node %s (SaveToFile): the excel format is not supported by Sluice's runtime (csv, json and markdown are); run this flow through the LangFlow front for Excel files", n.ID)
	}
	name, err := files.CleanName(path.Base(strings.ReplaceAll(name, `\`, "/")))
	if err != nil {
		return errs.Field(errs.Unprocessable, field("file_name"), "node %s (SaveToFile): the file name %q has no usable name", n.ID, name)
	}
	if ext := strings.TrimPrefix(strings.ToLower(path.Ext(name)), "."); ext != format {
		name += "." + format
	}
	sc, err := s.fileScope(n, "file_name")
	if err != nil {
		return err
	}
	var old []byte
	appending := false
	if boolParam(s.param(n, "append_mode")) {
		if f, err := s.e.Files.Find(ctx, sc, sc.ProjectID, name); err == nil {
			if old, err = s.e.Files.Read(f); err != nil {
				return err
			}
			appending = true
		} else if !errs.Is(err, errs.NotFound) {
			return err
		}
	}
	content, err := saveContent(kind, format, in, old, appending)
	if err != nil {
		return errs.Field(errs.Unprocessable, field("input"), "node %s (SaveToFile): %v", n.ID, err)
	}
	f, err := s.e.Files.Put(ctx, sc, sc.ProjectID, name, files.Replace, s.job.Who.UserID, strings.NewReader(content))
	if err != nil {
		var e *errs.Error
		if errors.As(err, &e) && (e.Code == errs.QuotaExceeded || e.Code == errs.TooLarge) {
			return &errs.Error{Code: e.Code, Field: field("input"), Message: fmt.Sprintf("node %s (SaveToFile): %s", n.ID, e.Message)}
		}
		return err
	}
	action := "saved successfully as"
	if appending {
		action = "appended to"
	}
	s.setOut(n.ID, "message", value{text: fmt.Sprintf("%s %s '%s' at %s", kind, action, f.Name, f.Path())})
	return nil
}

// storageLocation is the name a SortableListInput holds: [{"name": …}].
func storageLocation(p flow.Param) string {
	switch v := p.Value.(type) {
	case string:
		return v
	case []any:
		if len(v) > 0 {
			if m, ok := v[0].(map[string]any); ok {
				s, _ := m["name"].(string)
				return s
			}
		}
	case map[string]any:
		s, _ := v["name"].(string)
		return s
	}
	return ""
}

// saveContent renders the input in the format, after old when appending,
// as LangFlow's _save_message, _save_data and _save_dataframe write it.
func saveContent(kind, format string, in value, old []byte, appending bool) (string, error) {
	prev := string(old)
	if kind == "Message" {
		switch format {
		case "txt":
			if appending {
				return prev + "\n" + in.text, nil
			}
			return in.text, nil
		case "markdown":
			md := "**Message:**\n\n" + in.text
			if appending {
				return prev + "\n\n" + md, nil
			}
			return md, nil
		}
		msg := map[string]any{"message": in.text}
		if appending {
			return appendJSON(prev, []any{msg})
		}
		return pyJSONDumps(msg), nil
	}
	t := in.data
	switch format {
	case "csv":
		return csvText(t, prev, appending), nil
	case "markdown":
		md := (&table{kind: dataFrame, rows: t.rows}).markdown(false)
		if appending {
			return prev + "\n\n" + md, nil
		}
		return md, nil
	}
	// json
	if kind == "Data" && len(t.rows) == 1 {
		if appending {
			return appendJSON(prev, []any{rowMap(t.rows[0])})
		}
		return rowJSON(t.rows[0], ""), nil
	}
	if appending {
		recs := make([]any, len(t.rows))
		for i, r := range t.rows {
			recs[i] = rowMap(r)
		}
		return appendJSON(prev, recs)
	}
	var b strings.Builder
	b.WriteString("[")
	for i, r := range t.rows {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("\n  ")
		b.WriteString(rowJSON(r, "  "))
	}
	if len(t.rows) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("]")
	return b.String(), nil
}

// rowJSON is a row as an indented JSON object, its fields in order.
func rowJSON(r row, prefix string) string {
	if len(r) == 0 {
		return "{}"
	}
	var b bytes.Buffer
	b.WriteString("{\n")
	for i, f := range r {
		b.WriteString(prefix + "  ")
		writeJSON(&b, f.name, prefix+"  ")
		b.WriteString(": ")
		writeJSON(&b, f.value, prefix+"  ")
		if i < len(r)-1 {
			b.WriteByte(',')
		}
		b.WriteByte('\n')
	}
	b.WriteString(prefix + "}")
	return b.String()
}

// appendJSON is LangFlow's JSON append: the existing content as a list
// (an object becomes its first element, anything unreadable nothing), the
// new records after it, written with json.dumps(indent=2).
func appendJSON(prev string, recs []any) (string, error) {
	var existing []any
	var parsed any
	if strings.TrimSpace(prev) != "" && json.Unmarshal([]byte(prev), &parsed) == nil {
		switch p := parsed.(type) {
		case map[string]any:
			existing = []any{p}
		case []any:
			existing = p
		}
	}
	return pyJSONDumps(append(existing, recs...)), nil
}

// pyJSONDumps is Python's json.dumps(v, indent=2): non-ASCII escaped as
// \uXXXX (Go sorts object keys, as the records here were unordered maps).
func pyJSONDumps(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return "null"
	}
	var out strings.Builder
	for _, r := range strings.TrimSuffix(buf.String(), "\n") {
		switch {
		case r < 0x80:
			out.WriteRune(r)
		case r > 0xffff:
			r -= 0x10000
			fmt.Fprintf(&out, `\u%04x\u%04x`, 0xd800+(r>>10), 0xdc00+(r&0x3ff))
		default:
			fmt.Fprintf(&out, `\u%04x`, r)
		}
	}
	return out.String()
}

// csvText is pandas' to_csv(index=False): a header of the columns, then a
// line per row, fields quoted only when they must be; appending writes no
// header.
func csvText(t *table, prev string, appending bool) string {
	cols := t.columns()
	var b strings.Builder
	if appending {
		b.WriteString(prev)
	} else {
		writeCSVLine(&b, cols)
	}
	for _, r := range t.rows {
		cells := make([]string, len(cols))
		for i, c := range cols {
			if v, ok := r.get(c); ok && v != nil {
				switch v.(type) {
				case []any, map[string]any:
					cells[i] = pyRepr(v)
				default:
					cells[i] = pyStr(v)
				}
			}
		}
		writeCSVLine(&b, cells)
	}
	return b.String()
}

func writeCSVLine(b *strings.Builder, cells []string) {
	for i, c := range cells {
		if i > 0 {
			b.WriteByte(',')
		}
		if strings.ContainsAny(c, ",\"\r\n") {
			b.WriteString(`"` + strings.ReplaceAll(c, `"`, `""`) + `"`)
		} else {
			b.WriteString(c)
		}
	}
	b.WriteByte('\n')
}
