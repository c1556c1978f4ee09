package schemas

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// ErrMalformed reports a body that is not JSON at all.
var ErrMalformed = errors.New("body is not valid JSON")

// Schema is a compiled JSON Schema. It is safe for concurrent use.
type Schema struct {
	s *jsonschema.Schema
}

// Compile loads and compiles the schema file at path (any draft the library
// knows; draft 2020-12 when the file does not say).
func Compile(path string) (*Schema, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(abs)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, fmt.Errorf("cannot read schema: %w", err)
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("schema is not valid JSON: %w", err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(abs, doc); err != nil {
		return nil, fmt.Errorf("load schema: %w", err)
	}
	s, err := c.Compile(abs)
	if err != nil {
		return nil, fmt.Errorf("compile schema: %s", strings.ReplaceAll(err.Error(), "file://"+abs, filepath.Base(abs)))
	}
	return &Schema{s: s}, nil
}

// Validate checks body against the schema. It returns ErrMalformed for a body
// that is not JSON, or an error whose text lists each violation with its JSON
// pointer ("/level: value must be one of ..."), never the schema's location.
func (s *Schema) Validate(body []byte) error {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		return ErrMalformed
	}
	err = s.s.Validate(doc)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return err
	}
	var msgs []string
	for _, u := range ve.BasicOutput().Errors {
		if u.Error == nil {
			continue
		}
		loc := u.InstanceLocation
		if loc == "" {
			loc = "/"
		}
		msgs = append(msgs, loc+": "+u.Error.String())
		if len(msgs) == 10 {
			break
		}
	}
	if len(msgs) == 0 {
		msgs = append(msgs, "body does not match the route's schema")
	}
	return errors.New(strings.Join(msgs, "; "))
}
