package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/internal/errs"
	"github.com/sluicehq/sluice/internal/files"
	"github.com/sluicehq/sluice/internal/policy"
	"github.com/sluicehq/sluice/internal/tenancy"
)

// LangFlow's file routes, on a project's file storage. v1 keeps files per
// flow (the folder is the flow's id; the flow must be the caller's to use);
// v2 keeps the project's own files (the folder is the project's id; the
// project is the key's default one, or ?project_id=). Every lookup names
// the tenant and project the caller works in, so another's file is 404.
func (s *Server) fileRoutes(mux *routes) {
	if s.Files == nil || s.Runs == nil {
		return
	}
	mux.HandleFunc("POST /api/v1/files/upload/{flow_id}", s.uploadFlowFile)
	mux.HandleFunc("GET /api/v1/files/list/{flow_id}", s.listFlowFiles)
	mux.HandleFunc("GET /api/v1/files/download/{flow_id}/{file_name}", s.downloadFlowFile)
	mux.HandleFunc("DELETE /api/v1/files/delete/{flow_id}/{file_name}", s.deleteFlowFile)
	mux.HandleFunc("POST /api/v2/files", s.uploadProjectFile)
	mux.HandleFunc("POST /api/v2/files/{$}", s.uploadProjectFile)
	mux.HandleFunc("GET /api/v2/files", s.listProjectFiles)
	mux.HandleFunc("GET /api/v2/files/{$}", s.listProjectFiles)
	mux.HandleFunc("GET /api/v2/files/{id}", s.downloadProjectFile)
	mux.HandleFunc("DELETE /api/v2/files/{id}", s.deleteProjectFile)
}

// flowScope is the scope and folder of a flow the caller may use.
func (s *Server) flowScope(ctx context.Context, flowID string) (files.Scope, string, error) {
	fl, err := s.Runs.Flow(ctx, flowID)
	if err != nil {
		return files.Scope{}, "", err
	}
	return files.Scope{TenantID: fl.TenantID, ProjectID: fl.ProjectID}, fl.ID, nil
}

// projectScope is the project the request names (?project_id=, else the
// key's default project), if the caller works in it.
func (s *Server) projectScope(r *http.Request) (files.Scope, error) {
	p, ok := tenancy.PrincipalFrom(r.Context())
	if !ok {
		return files.Scope{}, errs.E(errs.Unauthorized, "an API key is required")
	}
	projectID := p.ProjectID
	for k, v := range r.URL.Query() {
		switch k {
		case "project_id":
			projectID = v[0]
		default:
			return files.Scope{}, errs.Field(errs.Invalid, k, "unknown query parameter %q (project_id)", k)
		}
	}
	if projectID == "" {
		return files.Scope{}, errs.Field(errs.Invalid, "project_id", "project_id is required (the key has no default project)")
	}
	pr, err := s.Tenancy.Project(r.Context(), projectID)
	if err != nil {
		return files.Scope{}, errs.Field(errs.NotFound, "project_id", "project %s not found", projectID)
	}
	if err := s.Tenancy.CanWorkIn(r.Context(), p.UserID, pr.ID); err != nil && !p.AdminOf(pr.TenantID) {
		return files.Scope{}, errs.Field(errs.NotFound, "project_id", "project %s not found", projectID)
	}
	return files.Scope{TenantID: pr.TenantID, ProjectID: pr.ID}, nil
}

// uploadPart finds the multipart field "file" of an upload, its body held
// to the file limit plus room for the form's framing.
func (s *Server) uploadPart(w http.ResponseWriter, r *http.Request) (string, io.Reader, error) {
	limit := s.Files.MaxFile() + 64<<10
	if r.ContentLength > limit {
		return "", nil, errs.Field(errs.TooLarge, "file", "the upload is larger than the file limit of %s", policy.Bytes(s.Files.MaxFile()))
	}
	r.Body = http.MaxBytesReader(w, r.Body, limit)
	mr, err := r.MultipartReader()
	if err != nil {
		return "", nil, errs.Field(errs.Invalid, "file", "send the file as multipart/form-data in the field \"file\": %v", err)
	}
	for {
		part, err := mr.NextPart()
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return "", nil, errs.Field(errs.TooLarge, "file", "the upload is larger than the file limit of %s", policy.Bytes(s.Files.MaxFile()))
		}
		if err == io.EOF {
			return "", nil, errs.Field(errs.Invalid, "file", "the form has no field \"file\"")
		}
		if err != nil {
			return "", nil, errs.Field(errs.Invalid, "file", "reading the form: %v", err)
		}
		if part.FormName() == "file" {
			if part.FileName() == "" {
				return "", nil, errs.Field(errs.Invalid, "file", "no file provided (the field \"file\" has no file name)")
			}
			return part.FileName(), part, nil
		}
	}
}

func (s *Server) upload(w http.ResponseWriter, r *http.Request, sc files.Scope, folder string, naming files.Naming) (*files.File, error) {
	name, body, err := s.uploadPart(w, r)
	if err != nil {
		return nil, err
	}
	p, _ := tenancy.PrincipalFrom(r.Context())
	return s.Files.Put(r.Context(), sc, folder, name, naming, p.UserID, body)
}

func (s *Server) uploadFlowFile(w http.ResponseWriter, r *http.Request) {
	sc, folder, err := s.flowScope(r.Context(), r.PathValue("flow_id"))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	f, err := s.upload(w, r, sc, folder, files.Timestamped)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"flowId": folder, "file_path": f.Path()})
}

func (s *Server) listFlowFiles(w http.ResponseWriter, r *http.Request) {
	sc, folder, err := s.flowScope(r.Context(), r.PathValue("flow_id"))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	fs, err := s.Files.List(r.Context(), sc, folder)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	names := make([]string, len(fs))
	for i, f := range fs {
		names[i] = f.Name
	}
	writeJSON(w, http.StatusOK, map[string][]string{"files": names})
}

// flowFile is the file a v1 route names, in a flow the caller may use.
func (s *Server) flowFile(r *http.Request) (files.Scope, *files.File, error) {
	sc, folder, err := s.flowScope(r.Context(), r.PathValue("flow_id"))
	if err != nil {
		return sc, nil, err
	}
	f, err := s.Files.Find(r.Context(), sc, folder, r.PathValue("file_name"))
	if err != nil {
		return sc, nil, err
	}
	return sc, f, nil
}

func (s *Server) downloadFlowFile(w http.ResponseWriter, r *http.Request) {
	_, f, err := s.flowFile(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	s.sendFile(w, r, f, f.Name)
}

func (s *Server) deleteFlowFile(w http.ResponseWriter, r *http.Request) {
	sc, f, err := s.flowFile(r)
	if err == nil {
		_, err = s.Files.Delete(r.Context(), sc, f.ID)
	}
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"message": fmt.Sprintf("File %s deleted successfully", f.Name)})
}

// v2View is a file as LangFlow's v2 API shows it: its name without the
// extension, its path "<folder>/<stored name>".
func v2View(f *files.File) map[string]any {
	name := f.Name
	if ext := path.Ext(name); ext != "" && ext != name {
		name = strings.TrimSuffix(name, ext)
	}
	return map[string]any{"id": f.ID, "user_id": f.CreatedBy, "name": name, "path": f.Path(), "size": f.Size,
		"provider": nil, "sha256": f.SHA256, "project_id": f.ProjectID,
		"created_at": f.CreatedAt.Format(time.RFC3339Nano), "updated_at": f.CreatedAt.Format(time.RFC3339Nano)}
}

func (s *Server) uploadProjectFile(w http.ResponseWriter, r *http.Request) {
	sc, err := s.projectScope(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	f, err := s.upload(w, r, sc, sc.ProjectID, files.Numbered)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	v := v2View(f)
	writeJSON(w, http.StatusCreated, map[string]any{"id": f.ID, "name": v["name"], "path": f.Path(), "size": f.Size, "provider": nil})
}

func (s *Server) listProjectFiles(w http.ResponseWriter, r *http.Request) {
	sc, err := s.projectScope(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	fs, err := s.Files.List(r.Context(), sc, sc.ProjectID)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	out := make([]map[string]any, len(fs))
	for i, f := range fs {
		out[i] = v2View(f)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) downloadProjectFile(w http.ResponseWriter, r *http.Request) {
	sc, err := s.projectScope(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	f, err := s.Files.Get(r.Context(), sc, r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	s.sendFile(w, r, f, f.Name)
}

func (s *Server) deleteProjectFile(w http.ResponseWriter, r *http.Request) {
	sc, err := s.projectScope(r)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	f, err := s.Files.Delete(r.Context(), sc, r.PathValue("id"))
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"detail": fmt.Sprintf("File %s deleted successfully", v2View(f)["name"])})
}

// sendFile answers with a file's bytes as an attachment.
func (s *Server) sendFile(w http.ResponseWriter, r *http.Request, f *files.File, name string) {
	fh, err := s.Files.Open(f)
	if err != nil {
		writeError(w, r, s.Log, err)
		return
	}
	defer fh.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	h.Set("Content-Length", strconv.FormatInt(f.Size, 10))
	cd := mime.FormatMediaType("attachment", map[string]string{"filename": name})
	if cd == "" {
		cd = "attachment" // a name mime cannot quote: the bytes still come
	}
	h.Set("Content-Disposition", cd)
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, io.LimitReader(fh, f.Size))
}
