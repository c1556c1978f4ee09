// Package config reads sluice's YAML config file: it decodes it against the
// Config struct (reporting unknown keys and wrong types with their key path),
// fills documented defaults and validates every value, reporting all problems
// at once, one per line, each starting with its key ("backends[1].rate: must
// be >= 0"). Keys whose feature this release does not have are refused, never
// silently ignored.
package config
