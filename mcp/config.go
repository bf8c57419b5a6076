package mcp

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/latchbroker/latch/templates/strictyaml"
)

// Config is the MCP server's file: the tasks it offers and the commands
// each may run.
type Config struct {
	// ConsoleURL is latch's console, for the links of pending approvals.
	ConsoleURL string                `yaml:"console_url"`
	Tasks      map[string]TaskConfig `yaml:"tasks"`
}

// TaskConfig is one task offered to the model.
type TaskConfig struct {
	Commands map[string]CommandConfig `yaml:"commands"`
}

// CommandConfig is one command a task's credential may be used with.
type CommandConfig struct {
	Description string `yaml:"description"`
	// Run is the program (an absolute path) and its fixed arguments.
	Run []string `yaml:"run"`
	// Args are the arguments the model supplies, in order, each matched
	// whole by its pattern; they follow Run's.
	Args []ArgConfig `yaml:"args"`
	// Env maps an environment variable to the secret's field it gets
	// (PGPASSWORD: password); SetEnv sets fixed variables. The command
	// gets these, PATH and HOME, and nothing else of latch's environment.
	Env    map[string]string `yaml:"env"`
	SetEnv map[string]string `yaml:"set_env"`
	// Timeout bounds the command (default 60s); MaxOutput its output
	// (default 64 KiB, the rest cut).
	Timeout   time.Duration `yaml:"timeout"`
	MaxOutput int           `yaml:"max_output"`
}

// ArgConfig is one argument the model supplies.
type ArgConfig struct {
	Name        string `yaml:"name"`
	Description string `yaml:"description"`
	Pattern     string `yaml:"pattern"`
	re          *regexp.Regexp
}

// Defaults of a command.
const (
	DefaultTimeout   = time.Minute
	DefaultMaxOutput = 64 << 10
)

// Load reads and checks the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("mcp config: %w", err)
	}
	var cfg Config
	if err := strictyaml.Unmarshal(path, data, &cfg); err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &cfg, nil
}

func (c *Config) check() error {
	var errs []error
	if len(c.Tasks) == 0 {
		errs = append(errs, errors.New("tasks: name at least one task, with the commands it may run"))
	}
	for _, task := range slices.Sorted(maps.Keys(c.Tasks)) {
		t := c.Tasks[task]
		if len(t.Commands) == 0 {
			errs = append(errs, fmt.Errorf("tasks.%s.commands: name at least one command", task))
		}
		for _, name := range slices.Sorted(maps.Keys(t.Commands)) {
			cmd := t.Commands[name]
			errs = append(errs, cmd.check(fmt.Sprintf("tasks.%s.commands.%s", task, name))...)
			t.Commands[name] = cmd
		}
	}
	return errors.Join(errs...)
}

func (cmd *CommandConfig) check(path string) []error {
	var errs []error
	if len(cmd.Run) == 0 || !filepath.IsAbs(cmd.Run[0]) {
		errs = append(errs, fmt.Errorf("%s.run: start with the program's absolute path, such as [/usr/bin/psql, -At, -c]", path))
	}
	for i := range cmd.Args {
		a := &cmd.Args[i]
		if a.Name == "" || !strings.HasPrefix(a.Pattern, "^") || !strings.HasSuffix(a.Pattern, "$") {
			errs = append(errs, fmt.Errorf("%s.args[%d]: needs a name and a pattern anchored with ^ and $", path, i))
			continue
		}
		re, err := regexp.Compile(a.Pattern)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s.args[%d].pattern: %v", path, i, err))
			continue
		}
		a.re = re
	}
	for _, v := range append(slices.Sorted(maps.Keys(cmd.Env)), slices.Sorted(maps.Keys(cmd.SetEnv))...) {
		if !validEnvName(v) {
			errs = append(errs, fmt.Errorf("%s: %q is not an environment variable name", path, v))
		}
	}
	if cmd.Timeout <= 0 {
		cmd.Timeout = DefaultTimeout
	}
	if cmd.MaxOutput <= 0 {
		cmd.MaxOutput = DefaultMaxOutput
	}
	return errs
}

// argv checks the model's arguments against the command's and returns
// the whole command line.
func (cmd *CommandConfig) argv(args []string) ([]string, error) {
	if len(args) != len(cmd.Args) {
		return nil, fmt.Errorf("the command takes %d arguments (%s), not %d", len(cmd.Args), cmd.argNames(), len(args))
	}
	for i, a := range cmd.Args {
		if !a.re.MatchString(args[i]) {
			return nil, fmt.Errorf("argument %s does not match %s", a.Name, a.Pattern)
		}
	}
	return append(slices.Clone(cmd.Run), args...), nil
}

func (cmd *CommandConfig) argNames() string {
	names := make([]string, len(cmd.Args))
	for i, a := range cmd.Args {
		names[i] = a.Name
	}
	return strings.Join(names, ", ")
}

func validEnvName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
