// Package plot draws the charts of the bench and scale reports: line charts
// (scale curves, timelines) and empirical CDFs (latency distributions),
// written as image files (PNG by default) beside the markdown report that links them.
//
// It is a thin layer over gonum.org/v1/plot that fixes one look for every
// chart (size, grid, legend, colours and glyphs per series) and refuses data
// that would draw a misleading chart (no points, NaN, X and Y of different
// lengths, non-positive values on a log axis) instead of drawing it.
package plot

import (
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	gonum "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Default chart size: 8x5 in at gonum's 96 dpi is 768x480 px, wide enough
// for a legend of four series without covering the curves.
const (
	DefaultWidth  = 8 * vg.Inch
	DefaultHeight = 5 * vg.Inch
)

// Series is one named curve: point i is (X[i], Y[i]).
type Series struct {
	Name string    `json:"name"`
	X    []float64 `json:"x"`
	Y    []float64 `json:"y"`
}

// Option changes one aspect of a chart.
type Option func(*config)

type config struct {
	logX, logY    bool
	steps         bool
	noPoints      bool
	legendTop     bool
	legendLeft    bool
	legendSet     bool
	width, height vg.Length
	yMin, yMax    float64
	yRangeSet     bool
	xMin, xMax    float64
	xRangeSet     bool
	style         func(i int, name string) (colour, dashes int)
}

// LogX draws the X axis on a log10 scale (scale curves over 10..10,000 hosts).
func LogX() Option { return func(c *config) { c.logX = true } }

// LogY draws the Y axis on a log10 scale.
func LogY() Option { return func(c *config) { c.logY = true } }

// Steps draws each series as a step function (the value holds until the next
// point), which is what a count over time (e.g. endpoints programmed) is.
func Steps() Option { return func(c *config) { c.steps = true } }

// NoPoints draws lines without a glyph per point (series of thousands of points).
func NoPoints() Option { return func(c *config) { c.noPoints = true } }

// Legend places the legend in a corner of the data area.
func Legend(top, left bool) Option {
	return func(c *config) { c.legendTop, c.legendLeft, c.legendSet = top, left, true }
}

// Style picks each series' colour and dash pattern (indexes into gonum's
// plotutil palettes) from its position and name, so that related series can
// share a colour (e.g. one per implementation, solid ADD and dashed DEL).
// By default series i gets colour i and dashes i.
func Style(f func(i int, name string) (colour, dashes int)) Option {
	return func(c *config) { c.style = f }
}

// Size sets the image size.
func Size(w, h vg.Length) Option { return func(c *config) { c.width, c.height = w, h } }

// YRange fixes the Y axis range instead of fitting it to the data.
func YRange(min, max float64) Option {
	return func(c *config) { c.yMin, c.yMax, c.yRangeSet = min, max, true }
}

// XRange fixes the X axis range instead of fitting it to the data.
func XRange(min, max float64) Option {
	return func(c *config) { c.xMin, c.xMax, c.xRangeSet = min, max, true }
}

// Lines writes a line chart with a glyph at every point and a legend to path;
// the image format follows the extension (.png, .svg, .pdf).
func Lines(path, title, xLabel, yLabel string, series []Series, opts ...Option) error {
	cfg := newConfig(opts, true, true)
	if err := checkSeries(series, cfg); err != nil {
		return fmt.Errorf("chart %q (%s): %w", title, path, err)
	}
	p := newPlot(title, xLabel, yLabel, cfg)
	for i, s := range series {
		if err := addSeries(p, i, s, cfg); err != nil {
			return fmt.Errorf("chart %q (%s): series %q: %w", title, path, s.Name, err)
		}
	}
	return save(p, path, title, cfg)
}

// CDF writes the empirical cumulative distribution of each sample set to
// path: x = a value, y = the fraction (0..1) of samples <= x. Series are drawn
// in sorted-name order so colours and legend order are the same on every run.
func CDF(path, title, xLabel string, series map[string][]float64, opts ...Option) error {
	if len(series) == 0 {
		return fmt.Errorf("chart %q (%s): no series", title, path)
	}
	names := make([]string, 0, len(series))
	for name := range series {
		names = append(names, name)
	}
	sort.Strings(names)
	// Curves of a CDF rise to the right, so the bottom-right corner is the
	// one they leave empty.
	opts = append([]Option{Legend(false, false), YRange(0, 1), NoPoints(), Steps()}, opts...)
	ss := make([]Series, 0, len(names))
	for _, name := range names {
		ss = append(ss, ECDF(name, series[name]))
	}
	cfg := newConfig(opts, false, false)
	if err := checkSeries(ss, cfg); err != nil {
		return fmt.Errorf("chart %q (%s): %w", title, path, err)
	}
	p := newPlot(title, xLabel, "fraction of samples ≤ x", cfg)
	p.Y.Tick.Marker = fractionTicks{}
	for i, s := range ss {
		if err := addSeries(p, i, s, cfg); err != nil {
			return fmt.Errorf("chart %q (%s): series %q: %w", title, path, s.Name, err)
		}
	}
	return save(p, path, title, cfg)
}

// ECDF returns the empirical CDF of samples as a step series: sorted values
// against i/n. It starts at (min, 0) so the first step is visible. The input
// is not modified. NaN samples are kept so that CDF can reject them.
func ECDF(name string, samples []float64) Series {
	if len(samples) == 0 {
		return Series{Name: name}
	}
	v := slices.Clone(samples)
	slices.Sort(v)
	n := float64(len(v))
	s := Series{Name: name, X: make([]float64, 0, len(v)+1), Y: make([]float64, 0, len(v)+1)}
	s.X = append(s.X, v[0])
	s.Y = append(s.Y, 0)
	for i, x := range v {
		s.X = append(s.X, x)
		s.Y = append(s.Y, float64(i+1)/n)
	}
	return s
}

// fractionTicks labels a 0..1 axis every 0.2 with minor ticks every 0.1,
// finer than gonum's default (0, 0.5, 1) so p50 and p90 can be read off.
type fractionTicks struct{}

func (fractionTicks) Ticks(min, max float64) []gonum.Tick {
	var ticks []gonum.Tick
	for i := 0; i <= 10; i++ {
		v := float64(i) / 10
		if v < min || v > max {
			continue
		}
		t := gonum.Tick{Value: v}
		if i%2 == 0 {
			t.Label = strconv.FormatFloat(v, 'f', 1, 64)
		}
		ticks = append(ticks, t)
	}
	return ticks
}

func newConfig(opts []Option, legendTop, legendLeft bool) *config {
	cfg := &config{width: DefaultWidth, height: DefaultHeight}
	for _, o := range opts {
		o(cfg)
	}
	if !cfg.legendSet {
		// Scale curves and timelines mostly rise to the right: the top-left
		// corner is the emptiest.
		cfg.legendTop, cfg.legendLeft = legendTop, legendLeft
	}
	return cfg
}

func checkSeries(series []Series, cfg *config) error {
	if len(series) == 0 {
		return errors.New("no series")
	}
	seen := make(map[string]bool, len(series))
	for _, s := range series {
		if s.Name == "" {
			return errors.New("a series has no name (the legend needs one)")
		}
		if seen[s.Name] {
			return fmt.Errorf("two series named %q", s.Name)
		}
		seen[s.Name] = true
		if len(s.X) != len(s.Y) {
			return fmt.Errorf("series %q: %d X values but %d Y values", s.Name, len(s.X), len(s.Y))
		}
		if len(s.X) == 0 {
			return fmt.Errorf("series %q: no points", s.Name)
		}
		for i := range s.X {
			if err := checkValue("X", s.X[i], cfg.logX); err != nil {
				return fmt.Errorf("series %q point %d: %w", s.Name, i, err)
			}
			if err := checkValue("Y", s.Y[i], cfg.logY); err != nil {
				return fmt.Errorf("series %q point %d: %w", s.Name, i, err)
			}
		}
	}
	return nil
}

func checkValue(axis string, v float64, log bool) error {
	switch {
	case math.IsNaN(v):
		return fmt.Errorf("%s is NaN", axis)
	case math.IsInf(v, 0):
		return fmt.Errorf("%s is %v", axis, v)
	case log && v <= 0:
		return fmt.Errorf("%s = %v on a log axis (must be > 0)", axis, v)
	}
	return nil
}

func newPlot(title, xLabel, yLabel string, cfg *config) *gonum.Plot {
	p := gonum.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.Add(plotter.NewGrid())
	p.Legend.Top, p.Legend.Left = cfg.legendTop, cfg.legendLeft
	// Keep the legend off the frame so its text does not touch the axes.
	p.Legend.XOffs, p.Legend.YOffs = legendOffsets(cfg)
	p.X.Tick.Marker, p.Y.Tick.Marker = plainTicks{}, plainTicks{}
	if cfg.logX {
		p.X.Scale = gonum.LogScale{}
		p.X.Tick.Marker = logTicks{}
	}
	if cfg.logY {
		p.Y.Scale = gonum.LogScale{}
		p.Y.Tick.Marker = logTicks{}
	}
	return p
}

// plainTicks are gonum's default ticks labelled without trailing zeros
// ("2500", not "2500.00").
type plainTicks struct{}

func (plainTicks) Ticks(min, max float64) []gonum.Tick {
	ticks := gonum.DefaultTicks{}.Ticks(min, max)
	for i := range ticks {
		if ticks[i].Label != "" {
			ticks[i].Label = plainNumber(ticks[i].Value)
		}
	}
	return ticks
}

// plainNumber formats v with at most 6 significant digits and no exponent.
func plainNumber(v float64) string {
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'g', 6, 64), 64)
	return strconv.FormatFloat(r, 'f', -1, 64)
}

// logTicks put a tick at every 1..9 x 10^k and label 1, 2 and 5 x 10^k
// (only 10^k over more than three decades; every tick when that would
// leave fewer than three labels): gonum's LogTicks label powers of ten
// alone, which leaves a latency axis from 10 to 400 ms with two numbers.
type logTicks struct{}

func (logTicks) Ticks(min, max float64) []gonum.Tick {
	if min <= 0 || max <= min {
		return gonum.LogTicks{Prec: -1}.Ticks(min, max)
	}
	lo, hi := int(math.Floor(math.Log10(min))), int(math.Ceil(math.Log10(max)))
	label := func(m int) bool {
		if hi-lo > 3 {
			return m == 1
		}
		return m == 1 || m == 2 || m == 5
	}
	build := func(all bool) ([]gonum.Tick, int) {
		var ticks []gonum.Tick
		labelled := 0
		for k := lo; k <= hi; k++ {
			for m := 1; m <= 9; m++ {
				v := float64(m) * math.Pow(10, float64(k))
				if v < min*(1-1e-9) || v > max*(1+1e-9) {
					continue
				}
				t := gonum.Tick{Value: v}
				if all || label(m) {
					t.Label = plainNumber(v)
					labelled++
				}
				ticks = append(ticks, t)
			}
		}
		return ticks, labelled
	}
	ticks, n := build(false)
	if n < 3 {
		ticks, _ = build(true)
	}
	return ticks
}

func legendOffsets(cfg *config) (x, y vg.Length) {
	const pad = 6
	x, y = -pad, -pad
	if cfg.legendLeft {
		x = pad
	}
	if !cfg.legendTop {
		y = pad
	}
	return x, y
}

func addSeries(p *gonum.Plot, i int, s Series, cfg *config) error {
	xys := make(plotter.XYs, len(s.X))
	for j := range s.X {
		xys[j].X, xys[j].Y = s.X[j], s.Y[j]
	}
	line, err := plotter.NewLine(xys)
	if err != nil {
		return err
	}
	colour, dashes := i, i
	if cfg.style != nil {
		colour, dashes = cfg.style(i, s.Name)
	}
	line.Color = plotutil.Color(colour)
	line.Width = vg.Points(1.5)
	// Dashes tell series apart in a greyscale print; the first stays solid.
	line.Dashes = plotutil.Dashes(dashes)
	if cfg.steps {
		line.StepStyle = plotter.PostStep
	}
	p.Add(line)
	if cfg.noPoints {
		p.Legend.Add(s.Name, line)
		return nil
	}
	pts, err := plotter.NewScatter(xys)
	if err != nil {
		return err
	}
	pts.Color = plotutil.Color(colour)
	pts.Shape = plotutil.Shape(i)
	pts.Radius = vg.Points(2.5)
	p.Add(pts)
	p.Legend.Add(s.Name, line, pts)
	return nil
}

func save(p *gonum.Plot, path, title string, cfg *config) error {
	if cfg.xRangeSet {
		p.X.Min, p.X.Max = cfg.xMin, cfg.xMax
	}
	if cfg.yRangeSet {
		p.Y.Min, p.Y.Max = cfg.yMin, cfg.yMax
	}
	if p.X.Min == p.X.Max {
		// One distinct X (e.g. every sample equal): widen so the point is
		// not drawn on the frame.
		pad(&p.X.Min, &p.X.Max, cfg.logX)
	}
	if p.Y.Min == p.Y.Max {
		pad(&p.Y.Min, &p.Y.Max, cfg.logY)
	}
	if ext := strings.ToLower(filepath.Ext(path)); ext == "" {
		return fmt.Errorf("chart %q: %s has no extension to choose the image format by", title, path)
	}
	if err := p.Save(cfg.width, cfg.height, path); err != nil {
		return fmt.Errorf("chart %q: save %s: %w", title, path, err)
	}
	return nil
}

func pad(min, max *float64, log bool) {
	v := *min
	switch {
	case log:
		*min, *max = v/2, v*2
	case v == 0:
		*min, *max = -1, 1
	default:
		d := math.Abs(v) * 0.1
		*min, *max = v-d, v+d
	}
}
