package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// FixtureRecord is one key of a fixture dump (testdata/fixture-vN/
// records.json): the key and the bytes that the binaries of the fixture's
// SOURCE commit stored there, kept as they were.
type FixtureRecord struct {
	Key   string          `json:"key"`
	Value json.RawMessage `json:"value"`
}

// ReadFixture reads the records of the fixture in dir, for the tests that
// check that today's code reads what an earlier release wrote.
func ReadFixture(dir string) ([]FixtureRecord, error) {
	b, err := os.ReadFile(filepath.Join(dir, "records.json"))
	if err != nil {
		return nil, err
	}
	var recs []FixtureRecord
	if err := json.Unmarshal(b, &recs); err != nil {
		return nil, fmt.Errorf("fixture %s: %w", dir, err)
	}
	return recs, nil
}
