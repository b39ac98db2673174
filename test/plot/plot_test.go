package plot

import (
	"image"
	"image/png"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	gonum "gonum.org/v1/plot"
	"gonum.org/v1/plot/vg"
)

// decode opens a written chart and checks what a reader of the report would
// notice first: it is a PNG of the promised size with something drawn on it.
func decode(t *testing.T, path string, w, h vg.Length) image.Image {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open chart: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("decode %s as PNG: %v", path, err)
	}
	wantW, wantH := int(math.Round(w.Dots(96))), int(math.Round(h.Dots(96)))
	if b := img.Bounds(); b.Dx() != wantW || b.Dy() != wantH {
		t.Fatalf("%s is %dx%d px, want %dx%d", path, b.Dx(), b.Dy(), wantW, wantH)
	}
	if n := nonBackground(img); n < 1000 {
		t.Fatalf("%s: only %d pixels differ from the background, chart looks blank", path, n)
	}
	return img
}

func nonBackground(img image.Image) int {
	b := img.Bounds()
	bg := img.At(b.Min.X, b.Min.Y)
	br, bgc, bb, ba := bg.RGBA()
	n := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, a := img.At(x, y).RGBA()
			if r != br || g != bgc || bl != bb || a != ba {
				n++
			}
		}
	}
	return n
}

// coloured counts pixels that are clearly not grey: the curves are drawn in
// colour while axes, text and grid are black or grey, so a chart whose
// series were lost has almost none.
func coloured(img image.Image) int {
	b := img.Bounds()
	n := 0
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			hi, lo := max(r, g, bl), min(r, g, bl)
			if hi-lo > 0x4000 {
				n++
			}
		}
	}
	return n
}

func TestLinesWritesPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "scale.png")
	err := Lines(path, "Watch load", "hosts", "events/s", []Series{
		{Name: "tabby", X: []float64{10, 100, 1000, 10000}, Y: []float64{5, 40, 300, 2500}},
		{Name: "reference", X: []float64{10, 100, 1000, 10000}, Y: []float64{6, 60, 600, 6000}},
	}, LogX(), LogY())
	if err != nil {
		t.Fatalf("Lines: %v", err)
	}
	img := decode(t, path, DefaultWidth, DefaultHeight)
	if n := coloured(img); n < 200 {
		t.Fatalf("only %d coloured pixels: the series were not drawn", n)
	}
}

func TestCDFWritesPNG(t *testing.T) {
	path := filepath.Join(t.TempDir(), "add.png")
	err := CDF(path, "ADD latency", "ms", map[string][]float64{
		"tabby":            {12, 14, 13, 19, 15, 30, 12.5},
		"ptp + host-local": {10, 11, 10.5, 12, 25},
		"one sample":       {7},
	}, Size(6*vg.Inch, 4*vg.Inch))
	if err != nil {
		t.Fatalf("CDF: %v", err)
	}
	img := decode(t, path, 6*vg.Inch, 4*vg.Inch)
	if n := coloured(img); n < 200 {
		t.Fatalf("only %d coloured pixels: the series were not drawn", n)
	}
}

func TestStepsTimeline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "timeline.png")
	x := make([]float64, 500)
	y := make([]float64, 500)
	for i := range x {
		x[i] = float64(i) * 0.01
		y[i] = float64(i + 1)
	}
	if err := Lines(path, "Endpoints programmed", "s since write", "endpoints",
		[]Series{{Name: "host-1", X: x, Y: y}}, Steps(), NoPoints()); err != nil {
		t.Fatalf("Lines: %v", err)
	}
	decode(t, path, DefaultWidth, DefaultHeight)
}

func TestECDF(t *testing.T) {
	in := []float64{3, 1, 2, 2}
	s := ECDF("x", in)
	wantX := []float64{1, 1, 2, 2, 3}
	wantY := []float64{0, 0.25, 0.5, 0.75, 1}
	if len(s.X) != len(wantX) {
		t.Fatalf("ECDF X = %v, want %v", s.X, wantX)
	}
	for i := range wantX {
		if s.X[i] != wantX[i] || s.Y[i] != wantY[i] {
			t.Fatalf("ECDF = %v / %v, want %v / %v", s.X, s.Y, wantX, wantY)
		}
	}
	if in[0] != 3 {
		t.Fatalf("ECDF sorted its input in place: %v", in)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	nan := math.NaN()
	cases := []struct {
		name string
		draw func(path string) error
		want string
	}{
		{"no series", func(p string) error { return Lines(p, "t", "x", "y", nil) }, "no series"},
		{"empty series", func(p string) error {
			return Lines(p, "t", "x", "y", []Series{{Name: "a"}})
		}, "no points"},
		{"mismatched", func(p string) error {
			return Lines(p, "t", "x", "y", []Series{{Name: "a", X: []float64{1, 2}, Y: []float64{1}}})
		}, "2 X values but 1 Y values"},
		{"NaN", func(p string) error {
			return Lines(p, "t", "x", "y", []Series{{Name: "a", X: []float64{1, 2}, Y: []float64{1, nan}}})
		}, "Y is NaN"},
		{"Inf", func(p string) error {
			return Lines(p, "t", "x", "y", []Series{{Name: "a", X: []float64{math.Inf(1)}, Y: []float64{1}}})
		}, "X is +Inf"},
		{"zero on log axis", func(p string) error {
			return Lines(p, "t", "x", "y", []Series{{Name: "a", X: []float64{0, 10}, Y: []float64{1, 2}}}, LogX())
		}, "log axis"},
		{"unnamed", func(p string) error {
			return Lines(p, "t", "x", "y", []Series{{X: []float64{1}, Y: []float64{1}}})
		}, "no name"},
		{"duplicate name", func(p string) error {
			s := Series{Name: "a", X: []float64{1}, Y: []float64{1}}
			return Lines(p, "t", "x", "y", []Series{s, s})
		}, `two series named "a"`},
		{"CDF no series", func(p string) error { return CDF(p, "t", "ms", nil) }, "no series"},
		{"CDF empty samples", func(p string) error {
			return CDF(p, "t", "ms", map[string][]float64{"a": {1}, "b": {}})
		}, `series "b": no points`},
		{"CDF NaN sample", func(p string) error {
			return CDF(p, "t", "ms", map[string][]float64{"a": {1, nan}})
		}, "NaN"},
		{"no extension", func(p string) error {
			return Lines(strings.TrimSuffix(p, ".png"), "t", "x", "y", []Series{{Name: "a", X: []float64{1}, Y: []float64{1}}})
		}, "no extension"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "_")+".png")
			err := c.draw(path)
			if err == nil {
				t.Fatalf("no error, want one containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
			if _, statErr := os.Stat(path); statErr == nil {
				t.Fatalf("a chart was written despite the error")
			}
		})
	}
}

// TestStyle: two series given one colour draw no pixel in the colour the
// second would get by default (plotutil's second colour is green).
func TestStyle(t *testing.T) {
	greenish := func(img image.Image) int {
		n := 0
		b := img.Bounds()
		for y := b.Min.Y; y < b.Max.Y; y++ {
			for x := b.Min.X; x < b.Max.X; x++ {
				r, g, bl, _ := img.At(x, y).RGBA()
				if g > r+0x2000 && g > bl+0x2000 {
					n++
				}
			}
		}
		return n
	}
	series := map[string][]float64{"a": {1, 2, 3}, "b": {2, 3, 4}}
	dir := t.TempDir()
	def, styled := filepath.Join(dir, "default.png"), filepath.Join(dir, "styled.png")
	if err := CDF(def, "t", "ms", series); err != nil {
		t.Fatal(err)
	}
	if err := CDF(styled, "t", "ms", series, Style(func(i int, _ string) (int, int) { return 0, i })); err != nil {
		t.Fatal(err)
	}
	if n := greenish(decode(t, def, DefaultWidth, DefaultHeight)); n < 50 {
		t.Fatalf("default colours: only %d green pixels for the second series", n)
	}
	if n := greenish(decode(t, styled, DefaultWidth, DefaultHeight)); n != 0 {
		t.Fatalf("Style gave both series colour 0, yet %d pixels are green", n)
	}
}

func TestTickLabels(t *testing.T) {
	labels := func(ticks []gonum.Tick) string {
		var l []string
		for _, t := range ticks {
			if t.Label != "" {
				l = append(l, t.Label)
			}
		}
		return strings.Join(l, " ")
	}
	for _, c := range []struct {
		min, max float64
		want     string
	}{
		{10, 440, "10 20 50 100 200"},
		{30, 45, "30 40"},
		{3, 40000, "10 100 1000 10000"},
		{0.5, 3, "0.5 1 2"},
	} {
		if got := labels(logTicks{}.Ticks(c.min, c.max)); got != c.want {
			t.Errorf("log ticks %v..%v labelled %q, want %q", c.min, c.max, got, c.want)
		}
	}
	if got := labels(plainTicks{}.Ticks(0, 6000)); strings.Contains(got, ".") || !strings.Contains(got, "3000") {
		t.Errorf("linear ticks 0..6000 labelled %q, want whole numbers", got)
	}
}
