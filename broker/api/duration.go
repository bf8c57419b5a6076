package api

import (
	"encoding/json"
	"errors"
	"time"
)

// Duration is a time.Duration that travels as a Go duration string:
// "10m", "90s", "1h30m". Numbers are refused: a bare 600 could mean
// seconds or nanoseconds.
type Duration time.Duration

// ErrDurationFormat is returned for a duration that is not a string such
// as "10m".
var ErrDurationFormat = errors.New(`a duration must be a string such as "10m" or "90s"`)

// D is the time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String is the Go duration string.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON implements json.Marshaler.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON implements json.Unmarshaler.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return ErrDurationFormat
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return ErrDurationFormat
	}
	*d = Duration(v)
	return nil
}
