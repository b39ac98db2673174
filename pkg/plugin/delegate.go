package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/types/create"
)

// Delegate runs another plugin (the IPAM) the CNI way: found on CNI_PATH,
// this call's stdin and environment, CNI_COMMAND set to command. It exists so
// tabby does not link libcni's invoke package, which since CNI 1.3 brings
// OpenTelemetry into every plugin start.
func Delegate(ctx context.Context, command, pluginType string, stdin []byte) ([]byte, error) {
	bin, err := findPlugin(pluginType)
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, bin)
	env := make([]string, 0, len(os.Environ())+1)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CNI_COMMAND=") {
			env = append(env, kv)
		}
	}
	cmd.Env = append(env, "CNI_COMMAND="+command)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		var te types.Error
		if json.Unmarshal(out.Bytes(), &te) == nil && te.Code != 0 {
			return nil, &te
		}
		return nil, fmt.Errorf("%s %s: %v: %s", pluginType, command, err, strings.TrimSpace(errb.String()+out.String()))
	}
	return out.Bytes(), nil
}

// DelegateAdd runs the IPAM's ADD and parses its result, whatever its version.
func DelegateAdd(ctx context.Context, pluginType string, stdin []byte) (types.Result, error) {
	out, err := Delegate(ctx, "ADD", pluginType, stdin)
	if err != nil {
		return nil, err
	}
	r, err := create.CreateFromBytes(out)
	if err != nil {
		return nil, fmt.Errorf("%s result: %w", pluginType, err)
	}
	return r, nil
}

func findPlugin(name string) (string, error) {
	if strings.ContainsRune(name, os.PathSeparator) {
		return "", fmt.Errorf("plugin type %q must be a plain name", name)
	}
	paths := filepath.SplitList(os.Getenv("CNI_PATH"))
	for _, d := range paths {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("plugin %q not found in CNI_PATH %v", name, paths)
}
