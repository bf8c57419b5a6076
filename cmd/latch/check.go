package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/latchbroker/latch/templates/strictyaml"
)

// configFlagFor is the --config flag of the offline commands. LATCH_CONFIG
// lets CI and shells set it once.
func configFlagFor() *cli.StringFlag {
	return &cli.StringFlag{
		Name:    "config",
		Aliases: []string{"c"},
		Usage:   "path to latch.yaml",
		Value:   "latch.yaml",
		EnvVars: []string{"LATCH_CONFIG"},
	}
}

// errInvalidConfig is returned after the errors themselves were printed, so
// main adds one summary line and exits 1.
var errInvalidConfig = errors.New("invalid config")

func checkCommand() *cli.Command {
	return &cli.Command{
		Name:      "check",
		Usage:     "validate the config and every template, offline",
		UsageText: "latch check --config FILE",
		Description: "Runs exactly the loading code latch server runs at start: strict YAML (unknown\n" +
			"keys are errors), backends, agents, operators, freeze windows, risk tiers, and\n" +
			"every template in templates_dir, with CEL conditions compiled and type-checked\n" +
			"and every policy rendered once. Prints \"ok: N templates, M agents\", or every\n" +
			"problem as file:line:col: message on stderr and exits 1.",
		Flags:  []cli.Flag{configFlagFor()},
		Action: runCheck,
	}
}

func runCheck(c *cli.Context) error {
	if err := noArgs(c); err != nil {
		return err
	}
	cfg, err := LoadConfig(c.String("config"))
	if err != nil {
		return printConfigErrors(c, err)
	}
	pol := cfg.Policy
	fmt.Fprintf(c.App.Writer, "ok: %d templates, %d agents\n", len(pol.Templates()), len(pol.Agents()))
	return nil
}

// printConfigErrors prints a LoadConfig error one problem per line on
// stderr and returns the summary error for main.
func printConfigErrors(c *cli.Context, err error) error {
	var errs strictyaml.Errors
	if !errors.As(err, &errs) {
		return err
	}
	for _, e := range errs {
		fmt.Fprintln(c.App.ErrWriter, e.Error())
	}
	return fmt.Errorf("%w: %d error%s in %s", errInvalidConfig, len(errs), map[bool]string{true: "", false: "s"}[len(errs) == 1], c.String("config"))
}

// noArgs rejects positional arguments. urfave/cli stops parsing flags at the
// first argument, so a stray word would silently turn the flags after it
// into arguments; say so, with the right form.
func noArgs(c *cli.Context) error {
	if c.NArg() == 0 {
		return nil
	}
	return fmt.Errorf("unexpected argument %q: %s takes only flags; usage: %s", c.Args().First(), c.Command.Name, c.Command.UsageText)
}
