package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/sluicehq/sluice/internal/errs"
)

// fileCommands are a project's files (LangFlow's v2 files API): what its
// flows' File nodes read.
func fileCommands(add func(*command)) {
	const fpath = "/api/v2/files"
	fFileProject := flagSpec{"project", "NAME", "the project, by name or id (default: your key's)"}
	const fileAbout = "FILE is a file's id, its name (report, or report.pdf), or its stored name (report (1).pdf)."
	projectQ := func(x *invocation) url.Values {
		q := url.Values{}
		if p := x.flags["project_id"]; p != "" {
			q.Set("project_id", p)
		}
		return q
	}
	add(&command{path: []string{"files", "list"}, nargs: 0, summary: "list a project's files",
		flags: []flagSpec{fTenant, fFileProject},
		view: &view{columns: []column{{"NAME", storedName}, field("SIZE", "size"), ref("BY", "user_id", "user"), field("CREATED", "created_at"),
			field("ID", "id")}},
		examples: []string{"sluice files list", "sluice files list --tenant university --project group-1 -o json"},
		run:      func(x *invocation) error { return x.show(http.MethodGet, fpath, projectQ(x), nil) }})
	add(&command{path: []string{"files", "upload"}, args: "PATH", nargs: 1, long: true,
		summary: "upload a file to a project (- reads standard input)",
		about:   "A name the project already has is kept: the new file is stored as NAME (1).EXT. The server's files.max_file_bytes and files.project_quota apply.",
		flags:   []flagSpec{fTenant, fFileProject, {"name", "NAME", "the file's name (default: PATH's; required with -)"}},
		examples: []string{"sluice files upload handbook.pdf --project group-1",
			"pg_dump … | sluice files upload - --name dump.sql"},
		run: func(x *invocation) error {
			name := x.flags["name"]
			if name == "" {
				if x.args[0] == "-" {
					return usageError("files upload -: give the file a name with --name")
				}
				name = filepath.Base(x.args[0])
			}
			var data []byte
			var err error
			if x.args[0] == "-" {
				data, err = io.ReadAll(clientStdin)
			} else {
				data, err = readInput(x.args[0])
			}
			if err != nil {
				return err
			}
			var body bytes.Buffer
			mw := multipart.NewWriter(&body)
			part, err := mw.CreateFormFile("file", name)
			if err != nil {
				return err
			}
			_, _ = part.Write(data)
			if err := mw.Close(); err != nil {
				return err
			}
			var raw json.RawMessage
			if err := x.c.DoRaw(x.ctx, http.MethodPost, fpath, projectQ(x), mw.FormDataContentType(), body.Bytes(), &raw); err != nil {
				return err
			}
			return printRaw(x.out(), raw)
		}})
	add(&command{path: []string{"files", "download"}, args: "FILE", nargs: 1, long: true, summary: "download a file", about: fileAbout + `
The file is written to --to, else to its stored name in the current directory; an existing
file is not overwritten. Its size and SHA-256 are checked against the server's record.`,
		flags:    []flagSpec{fTenant, fFileProject, {"to", "PATH", "where to write it (- for standard output)"}},
		examples: []string{"sluice files download handbook --project group-1", "sluice files download fil_01… --to - | less"},
		run: func(x *invocation) error {
			f, err := findFile(x, projectQ(x))
			if err != nil {
				return err
			}
			return downloadFile(x, fpath+"/"+url.PathEscape(f.ID), projectQ(x), f)
		}})
	add(&command{path: []string{"files", "delete"}, args: "FILE", nargs: 1, summary: "delete a file", about: fileAbout,
		flags: []flagSpec{fTenant, fFileProject}, examples: []string{"sluice files delete handbook --project group-1"},
		run: func(x *invocation) error {
			f, err := findFile(x, projectQ(x))
			if err != nil {
				return err
			}
			return x.show(http.MethodDelete, fpath+"/"+url.PathEscape(f.ID), projectQ(x), nil)
		}})
}

// storedName is a file's name as stored: the last part of its path.
func storedName(_ *output, m map[string]any) string { return path.Base(str(m, "path")) }

// projectFile is a file as the v2 list shows it.
type projectFile struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// findFile finds the file x.args[0] names in the project's list: by id,
// stored name, or name with or without its extension.
func findFile(x *invocation, q url.Values) (projectFile, error) {
	var list []projectFile
	if err := x.c.Do(x.ctx, http.MethodGet, "/api/v2/files", q, nil, &list); err != nil {
		return projectFile{}, err
	}
	want := x.args[0]
	var hits []projectFile
	for _, f := range list {
		if f.ID == want {
			return f, nil
		}
		stored := path.Base(f.Path)
		if stored == want || f.Name == want {
			hits = append(hits, f)
		}
	}
	switch len(hits) {
	case 1:
		return hits[0], nil
	case 0:
		var names []string
		for _, f := range list {
			if len(names) < 20 {
				names = append(names, path.Base(f.Path))
			}
		}
		there := "the project has no files"
		if len(names) > 0 {
			there = "there are: " + strings.Join(names, ", ")
		}
		return projectFile{}, errs.Field(errs.NotFound, "file", "no file named %q in the project; %s", want, there)
	}
	var cands []string
	for _, h := range hits {
		cands = append(cands, fmt.Sprintf("%s (%s)", path.Base(h.Path), h.ID))
	}
	return projectFile{}, errs.Field(errs.Invalid, "file", "%d files are named %q: %s; give the stored name or the id", len(hits), want, strings.Join(cands, ", "))
}

// downloadFile writes the file's bytes where --to says, checking their
// size and SHA-256; a partial or corrupt file is removed.
func downloadFile(x *invocation, p string, q url.Values, f projectFile) error {
	body, err := x.c.Stream(x.ctx, http.MethodGet, p, q, "", nil)
	if err != nil {
		return err
	}
	defer body.Close()
	to := x.flags["to"]
	if to == "" {
		to = path.Base(f.Path)
		if to == "." || to == "/" || to == ".." {
			to = f.ID
		}
	}
	var w io.Writer = x.stdout
	var file *os.File
	if to != "-" {
		file, err = os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			return usageError(fmt.Sprintf("files download: %s exists; choose another with --to PATH (or remove it)", to))
		}
		if err != nil {
			return usageError(fmt.Sprintf("files download: --to: %v", err))
		}
		w = file
	}
	sum := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, sum), body)
	if err == nil && n != f.Size {
		err = fmt.Errorf("got %d bytes, the server's record says %d", n, f.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); err == nil && f.SHA256 != "" && got != f.SHA256 {
		err = fmt.Errorf("the bytes' SHA-256 is %s, the server's record says %s", got, f.SHA256)
	}
	if file != nil {
		if cerr := file.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(to)
			return errs.E(errs.Unavailable, "download %s: %v (nothing kept)", f.ID, err)
		}
		fmt.Fprintf(x.stderr, "%s: %d bytes, sha256 %s\n", to, n, f.SHA256)
		return nil
	}
	if err != nil {
		return errs.E(errs.Unavailable, "download %s: %v", f.ID, err)
	}
	return nil
}
