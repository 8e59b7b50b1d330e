#include "cost_quality_plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {
namespace {

constexpr double kWidth = 720, kHeight = 480;
constexpr double kLeft = 70, kRight = 30, kTop = 50, kBottom = 55;
// The reliability panel right of the cost-quality plane: a square plot
// sharing the plane's bottom edge.
constexpr double kReliabilityLeft = kWidth + 60, kReliabilitySize = 330;
constexpr double kFullWidth = kReliabilityLeft + kReliabilitySize + 30;

std::string xml_text(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

// Maps (cost, quality) to pixels: cost on a log10 axis.
struct Axes {
  double log_min, log_max, q_min, q_max;

  double x(double cost) const {
    const double t = (std::log10(cost) - log_min) / (log_max - log_min);
    return kLeft + t * (kWidth - kLeft - kRight);
  }
  double y(double quality) const {
    const double t = (quality - q_min) / (q_max - q_min);
    return kHeight - kBottom - t * (kHeight - kTop - kBottom);
  }
};

// The reliability diagram of the picks at lambda = 0: each non-empty bin's
// mean expected quality against its mean true quality, labelled with its
// prompt count, over the diagonal a calibrated router would follow.
std::string reliability_panel(const RouterFigures& router) {
  const double x0 = kReliabilityLeft, x1 = x0 + kReliabilitySize;
  const double y0 = kHeight - kBottom, y1 = y0 - kReliabilitySize;
  auto x = [&](double p) { return x0 + p * kReliabilitySize; };
  auto y = [&](double q) { return y0 - std::clamp(q, 0.0, 1.0) * kReliabilitySize; };
  std::string svg = fmt::format(
      "<g class=\"reliability\">\n<text x=\"{}\" y=\"{}\" font-size=\"13\" font-weight=\"bold\">"
      "reliability at lambda = 0 (ECE {:.4f})</text>\n",
      x0, y1 - 12, *router.ece);
  for (int t = 0; t <= 10; t += 2) {
    const double v = t / 10.0;
    svg += fmt::format(
        "<line x1=\"{0:.1f}\" y1=\"{2}\" x2=\"{0:.1f}\" y2=\"{3}\" stroke=\"#ddd\"/>"
        "<line x1=\"{4}\" y1=\"{1:.1f}\" x2=\"{5}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
        "<text class=\"tick\" x=\"{0:.1f}\" y=\"{6}\" text-anchor=\"middle\">{7:.1f}</text>"
        "<text class=\"tick\" x=\"{8}\" y=\"{9:.1f}\" text-anchor=\"end\">{7:.1f}</text>\n",
        x(v), y(v), y0, y1, x0, x1, y0 + 16, v, x0 - 6, y(v) + 4);
  }
  svg += fmt::format(
      "<line x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#444\"/>"
      "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{3}\" stroke=\"#444\"/>\n"
      "<line class=\"reliability-diagonal\" x1=\"{0}\" y1=\"{1}\" x2=\"{2}\" y2=\"{3}\" "
      "stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n"
      "<text x=\"{4}\" y=\"{5}\" text-anchor=\"middle\">mean expected quality of the pick</text>\n"
      "<text x=\"{6}\" y=\"{7}\" text-anchor=\"middle\" transform=\"rotate(-90 {6} {7})\">"
      "mean true quality</text>\n",
      x0, y0, x1, y1, (x0 + x1) / 2, kHeight - 15, x0 - 40, (y0 + y1) / 2);
  std::string points;
  for (const ReliabilityBin& bin : router.reliability) {
    if (bin.count == 0) continue;
    const double px = x(bin.mean_predicted), py = y(bin.mean_observed);
    points += fmt::format("{:.1f},{:.1f} ", px, py);
    svg += fmt::format(
        "<circle class=\"reliability-bin\" cx=\"{0:.1f}\" cy=\"{1:.1f}\" r=\"4\" fill=\"#1f77b4\"/>"
        "<text class=\"bin-count\" x=\"{2:.1f}\" y=\"{3:.1f}\" font-size=\"9\">n={4}</text>\n",
        px, py, px + 6, py - 6, bin.count);
  }
  svg += fmt::format(
      "<polyline class=\"reliability-curve\" fill=\"none\" stroke=\"#1f77b4\" points=\"{}\"/>\n"
      "</g>\n",
      points);
  return svg;
}

}  // namespace

std::string cost_quality_svg(const EvalReport& report, const std::string& title) {
  const Baselines& b = report.baselines;
  std::vector<OperatingPoint> all = b.experts;
  all.push_back(b.random);
  all.push_back(b.oracle);
  if (report.router) {
    for (const auto& p : report.router->curve) all.push_back({p.quality, p.cost});
  }
  double c_lo = std::numeric_limits<double>::infinity(), c_hi = 0, q_lo = 1, q_hi = 0;
  for (const auto& p : all) {
    if (p.cost > 0) {
      c_lo = std::min(c_lo, p.cost);
      c_hi = std::max(c_hi, p.cost);
    }
    q_lo = std::min(q_lo, p.quality);
    q_hi = std::max(q_hi, p.quality);
  }
  if (!(c_hi > 0)) c_lo = c_hi = 1e-6;  // no positive cost: any scale will do
  // Whole decades around the data, so tick labels are round numbers.
  Axes axes{std::floor(std::log10(c_lo) - 0.05), std::ceil(std::log10(c_hi) + 0.05),
            std::max(0.0, std::floor(q_lo * 10 - 0.5) / 10), std::min(1.0, std::ceil(q_hi * 10 + 0.5) / 10)};
  if (axes.q_max <= axes.q_min) axes.q_max = axes.q_min + 0.1;
  auto clamp_cost = [&](double cost) { return cost > 0 ? cost : std::pow(10.0, axes.log_min); };
  const bool with_reliability = report.router && report.router->ece;

  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{0}\" height=\"{1}\" viewBox=\"0 0 {0} {1}\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n"
      "<rect width=\"{0}\" height=\"{1}\" fill=\"white\"/>\n"
      "<text x=\"{2}\" y=\"24\" font-size=\"15\" font-weight=\"bold\">{3}</text>\n",
      with_reliability ? kFullWidth : kWidth, kHeight, kLeft, xml_text(title));

  // Axes, decade ticks on cost, tenths on quality.
  const double x0 = kLeft, x1 = kWidth - kRight, y0 = kHeight - kBottom, y1 = kTop;
  svg += fmt::format("<g class=\"axes\" stroke=\"#444\">\n<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n"
                     "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\"/>\n</g>\n",
                     x0, y0, x1, y0, x0, y0, x0, y1);
  for (double d = axes.log_min; d <= axes.log_max + 1e-9; d += 1) {
    const double x = axes.x(std::pow(10.0, d));
    svg += fmt::format("<line x1=\"{0:.1f}\" y1=\"{1}\" x2=\"{0:.1f}\" y2=\"{2}\" stroke=\"#ddd\"/>"
                       "<text class=\"tick\" x=\"{0:.1f}\" y=\"{3}\" text-anchor=\"middle\">$1e{4:.0f}</text>\n",
                       x, y0, y1, y0 + 16, d);
  }
  for (double q = axes.q_min; q <= axes.q_max + 1e-9; q += 0.1) {
    const double y = axes.y(q);
    svg += fmt::format("<line x1=\"{0}\" y1=\"{1:.1f}\" x2=\"{2}\" y2=\"{1:.1f}\" stroke=\"#ddd\"/>"
                       "<text class=\"tick\" x=\"{3}\" y=\"{4:.1f}\" text-anchor=\"end\">{5:.1f}</text>\n",
                       x0, y, x1, x0 - 6, y + 4, q);
  }
  svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">mean cost per query (USD, log scale)</text>\n",
                     (x0 + x1) / 2, kHeight - 15);
  svg += fmt::format("<text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">"
                     "mean quality</text>\n",
                     (y0 + y1) / 2, (y0 + y1) / 2);

  if (report.router) {
    // The curve as swept, then its upper hull (what AIQ integrates).
    std::vector<OperatingPoint> curve = curve_points(report.router->curve);
    std::sort(curve.begin(), curve.end(),
              [](const OperatingPoint& a, const OperatingPoint& c) { return a.cost < c.cost; });
    std::string points;
    for (const auto& p : curve) points += fmt::format("{:.1f},{:.1f} ", axes.x(clamp_cost(p.cost)), axes.y(p.quality));
    svg += fmt::format("<polyline class=\"router-curve\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"1.5\" "
                       "points=\"{}\"/>\n", points);
    std::string hull;
    for (const auto& p : upper_hull(curve)) hull += fmt::format("{:.1f},{:.1f} ", axes.x(clamp_cost(p.cost)), axes.y(p.quality));
    svg += fmt::format("<polyline class=\"router-hull\" fill=\"none\" stroke=\"#1f77b4\" stroke-dasharray=\"4 3\" "
                       "points=\"{}\"/>\n", hull);
    const CurvePoint& first = report.router->at_lambda0;
    const double x = axes.x(clamp_cost(first.cost));
    const bool left = x + 130 > kWidth - 4;
    svg += fmt::format("<text class=\"label\" x=\"{:.1f}\" y=\"{:.1f}\" fill=\"#1f77b4\" text-anchor=\"{}\">"
                       "router (AIQ {:.4f})</text>\n",
                       left ? x - 6 : x + 6, axes.y(first.quality) - 8, left ? "end" : "start",
                       report.router->aiq);
  }
  for (std::size_t e = 0; e < b.experts.size(); ++e) {
    const double x = axes.x(clamp_cost(b.experts[e].cost)), y = axes.y(b.experts[e].quality);
    // A label that would run off the right edge goes left of its point.
    const double label_width = 6.2 * static_cast<double>(report.experts[e].size());
    const bool left = x + 6 + label_width > kWidth - 4;
    svg += fmt::format("<circle class=\"expert\" cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"4\" fill=\"{}\"/>"
                       "<text class=\"label\" x=\"{:.1f}\" y=\"{:.1f}\" text-anchor=\"{}\">{}</text>\n",
                       x, y, e == b.best.index ? "#d62728" : "#555", left ? x - 6 : x + 6, y + 4,
                       left ? "end" : "start", xml_text(report.experts[e]));
  }
  auto marker = [&](const OperatingPoint& p, const char* name, const char* colour) {
    const double x = axes.x(clamp_cost(p.cost)), y = axes.y(p.quality);
    svg += fmt::format("<rect class=\"{0}\" x=\"{1:.1f}\" y=\"{2:.1f}\" width=\"8\" height=\"8\" fill=\"{3}\"/>"
                       "<text class=\"label\" x=\"{4:.1f}\" y=\"{5:.1f}\" fill=\"{3}\">{0}</text>\n",
                       name, x - 4, y - 4, colour, x + 7, y + 4);
  };
  marker(b.random, "random", "#7f7f7f");
  marker(b.oracle, "oracle", "#2ca02c");
  if (with_reliability) svg += reliability_panel(*report.router);
  svg += "</svg>\n";
  return svg;
}

}  // namespace cli
TOROUTER_END_NAMESPACE
