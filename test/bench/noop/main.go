// noop is a CNI plugin that does nothing: the bench's floor for what any Go
// plugin costs under cnitool (process start-up, Go runtime init, stdin and
// stdout). It imports only the standard library's encoding/json.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

func main() {
	switch os.Getenv("CNI_COMMAND") {
	case "VERSION":
		fmt.Print(`{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}`)
	case "ADD":
		var conf struct {
			CNIVersion string `json:"cniVersion"`
		}
		b, err := io.ReadAll(os.Stdin)
		if err == nil {
			err = json.Unmarshal(b, &conf)
		}
		if err != nil {
			fmt.Printf(`{"cniVersion":"1.0.0","code":4,"msg":%q}`, err.Error())
			os.Exit(1)
		}
		fmt.Printf(`{"cniVersion":%q}`, conf.CNIVersion)
	default: // DEL, CHECK, GC, STATUS: nothing to undo or check
		_, _ = io.Copy(io.Discard, os.Stdin)
	}
}
