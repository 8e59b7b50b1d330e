// The model file container: a JSON header (written with fmt, read with
// simdjson) and float32 or float16 tensors, little-endian whatever the host.
#include "torouter/model_io.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <system_error>
#include <tuple>
#include <unordered_map>

#include "compact_storage.hpp"
#include "fnv.hpp"
#include "json_text.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace {

constexpr char kMagic[8] = {'T', 'O', 'R', 'M', 'O', 'D', 'E', 'L'};
constexpr std::size_t kPreambleBytes = 8 + 4 + 8;
// The header's last member: the FNV-1a-64 of the whole file, in 16 hex
// digits, taken with those digits as '0's. A damaged file is refused
// rather than served; readers before it ignore the member.
constexpr std::string_view kChecksumMember = ",\n \"checksum\": \"";
constexpr std::string_view kHeaderEnd = "\"}\n";
constexpr std::size_t kChecksumDigits = 16;

void append_le(std::string& out, std::uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFFu));
}

std::uint64_t read_le(const std::string& in, std::size_t at, int bytes) {
  std::uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) {
    value |= static_cast<std::uint64_t>(static_cast<unsigned char>(in[at + static_cast<std::size_t>(i)]))
             << (8 * i);
  }
  return value;
}

// Tensors are stored little-endian; on such a host they are copied as they are.
bool host_is_little_endian() {
  const std::uint32_t one = 1;
  unsigned char first = 0;
  std::memcpy(&first, &one, 1);
  return first == 1;
}

std::string field_json(const std::string& key, const ModelField& value) {
  struct Visitor {
    const std::string& key;
    std::string operator()(double v) const {
      if (!std::isfinite(v)) throw Error(fmt::format("model field \"{}\" is not finite", key));
      return detail::json_number(v);
    }
    std::string operator()(const std::string& v) const { return detail::json_string(v); }
    std::string operator()(bool v) const { return v ? "true" : "false"; }
    std::string operator()(const std::vector<double>& v) const {
      std::string out = "[";
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        out += (*this)(v[i]);
      }
      return out + "]";
    }
    std::string operator()(const std::vector<std::string>& v) const {
      std::string out = "[";
      for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) out += ", ";
        out += detail::json_string(v[i]);
      }
      return out + "]";
    }
  };
  return std::visit(Visitor{key}, value);
}

std::uint64_t element_count(const std::vector<std::int64_t>& shape) {
  std::uint64_t n = 1;
  for (auto d : shape) n *= static_cast<std::uint64_t>(d);
  return n;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

static_assert(sizeof(Eigen::half) == 2, "Eigen::half is IEEE binary16");

std::uint16_t half_bits(float value) {
  return Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(value));
}

float half_value(std::uint16_t raw) {
  return static_cast<float>(Eigen::half(Eigen::half_impl::raw_uint16_to_half(raw)));
}

// True when every value is a half-precision number, so storing it in two
// bytes loses nothing (bit for bit: -0 stays -0).
bool all_half_exact(const std::vector<float>& values) {
  for (float v : values) {
    const float back = half_value(half_bits(v));
    if (std::memcmp(&back, &v, sizeof(v)) != 0) return false;
  }
  return true;
}

void append_float(std::string& out, float v) {
  std::uint32_t raw = 0;
  std::memcpy(&raw, &v, sizeof(raw));
  append_le(out, raw, 4);
}

// A "q8" tensor's rows: runs of its last dimension (a vector is one row).
std::size_t row_width(const std::vector<std::int64_t>& shape) {
  return shape.empty() ? 1 : static_cast<std::size_t>(shape.back());
}

// The int8 steps of each row (compact_storage.hpp's int8_row_scale of its
// largest magnitude; 0 for a row of zeros) when every value is a whole
// number of them, else nothing.
std::optional<std::vector<float>> exact_int8_scales(const std::vector<float>& values,
                                                    std::size_t width) {
  std::vector<float> scales;
  for (std::size_t start = 0; start < values.size(); start += width) {
    float largest = 0.0f;
    for (std::size_t i = start; i < start + width; ++i) {
      largest = std::max(largest, std::abs(values[i]));
    }
    const float scale = largest > 0.0f ? detail::int8_row_scale(largest) : 0.0f;
    for (std::size_t i = start; i < start + width && scale > 0.0f; ++i) {
      const float steps = std::nearbyint(values[i] / scale);
      if (std::abs(steps) > 127.0f || steps * scale != values[i]) return std::nullopt;
    }
    scales.push_back(scale);
  }
  return scales;
}

// A tensor as the payload holds it, the smallest that loses nothing: "q8"
// (a float32 scale per row, then one int8 a value) when every row is whole
// int8 steps of its scale and rows are wider than 4, "f16" when every value
// is a half-precision number, else "f32".
struct StoredTensor {
  std::string type;
  std::string bytes;
};

StoredTensor store(const ModelTensor& tensor, const std::string& path, const std::string& name) {
  const std::vector<float>& values = tensor.values;
  for (float v : values) {
    if (!std::isfinite(v)) {
      throw Error(
          fmt::format("{}: refusing to write tensor \"{}\": it holds NaN or infinity", path, name));
    }
  }
  StoredTensor out;
  if (values.empty()) {
    out.type = "f32";
    return out;
  }
  const std::size_t width = row_width(tensor.shape);
  if (width > 4) {
    if (const auto scales = exact_int8_scales(values, width)) {
      out.type = "q8";
      for (float scale : *scales) append_float(out.bytes, scale);
      for (std::size_t i = 0; i < values.size(); ++i) {
        const float scale = (*scales)[i / width];
        const float steps = scale > 0.0f ? std::nearbyint(values[i] / scale) : 0.0f;
        out.bytes.push_back(static_cast<char>(static_cast<std::int8_t>(steps)));
      }
      return out;
    }
  }
  const bool half = all_half_exact(values);
  out.type = half ? "f16" : "f32";
  out.bytes.reserve(values.size() * (half ? 2 : 4));
  for (float v : values) {
    if (half) {
      append_le(out.bytes, half_bits(v), 2);
    } else {
      append_float(out.bytes, v);
    }
  }
  return out;
}

}  // namespace

void ModelWriter::add_tensor(const std::string& name, std::vector<std::int64_t> shape,
                             std::vector<float> values) {
  for (auto d : shape) {
    if (d < 0) throw Error(fmt::format("tensor \"{}\": negative dimension", name));
  }
  if (element_count(shape) != values.size()) {
    throw Error(fmt::format("tensor \"{}\": shape {} does not hold {} values", name,
                            shape_text(shape), values.size()));
  }
  tensors_[name] = ModelTensor{std::move(shape), std::move(values)};
}

void ModelWriter::add_section(const std::string& prefix, const ModelWriter& part) {
  fields_[prefix + "kind"] = part.kind_;
  for (const auto& [key, value] : part.fields_) fields_[prefix + key] = value;
  for (const auto& [name, tensor] : part.tensors_) tensors_[prefix + name] = tensor;
}

namespace {

// Where each tensor's bytes are: stored as q8 or f16 where that is exact,
// and pointing at an earlier tensor's bytes when they are the same.
struct PlacedTensor {
  std::string name;
  std::string shape;
  std::string type;
  std::uint64_t offset;
};

struct Layout {
  std::vector<PlacedTensor> tensors;
  std::string payload;
  // The oldest format that holds the file, so older readers load what they
  // can: 2 for f16 or shared bytes, 3 for q8.
  std::uint32_t format_version = 1;
};

Layout lay_out(const std::map<std::string, ModelTensor>& tensors, const std::string& path) {
  Layout layout;
  std::unordered_map<std::string, std::uint64_t> offset_of_stored;
  for (const auto& [name, tensor] : tensors) {
    StoredTensor stored = store(tensor, path, name);
    std::uint64_t offset = layout.payload.size();
    if (!stored.bytes.empty()) {
      // q8 bytes read as rows of the width, so it is part of their key.
      const std::string width = stored.type == "q8" ? std::to_string(row_width(tensor.shape)) : "";
      auto [it, added] =
          offset_of_stored.emplace(stored.type + " " + width + " " + stored.bytes, offset);
      if (added) {
        layout.payload += stored.bytes;
      } else {
        offset = it->second;
        layout.format_version = std::max(layout.format_version, 2u);
      }
    }
    if (stored.type == "f16") layout.format_version = std::max(layout.format_version, 2u);
    if (stored.type == "q8") layout.format_version = 3;
    layout.tensors.push_back(PlacedTensor{name, shape_text(tensor.shape), stored.type, offset});
  }
  return layout;
}

}  // namespace

void ModelWriter::write(const std::string& path) const {
  const Layout layout = lay_out(tensors_, path);
  const std::uint32_t version = layout.format_version;
  std::string header = fmt::format("{{\"format_version\": {}, \"kind\": {}, \"fields\": {{",
                                   version, detail::json_string(kind_));
  bool first = true;
  for (const auto& [key, value] : fields_) {
    header += fmt::format("{}\n  {}: {}", first ? "" : ",", detail::json_string(key),
                          field_json(key, value));
    first = false;
  }
  header += "}, \"tensors\": [";
  first = true;
  for (const PlacedTensor& t : layout.tensors) {
    const std::string type = version >= 2 ? fmt::format(", \"type\": \"{}\"", t.type) : "";
    header += fmt::format("{}\n  {{\"name\": {}, \"shape\": {}{}, \"offset\": {}}}",
                          first ? "" : ",", detail::json_string(t.name), t.shape, type, t.offset);
    first = false;
  }
  header += "]";
  header += kChecksumMember;
  header += std::string(kChecksumDigits, '0');
  header += kHeaderEnd;

  std::string bytes(kMagic, sizeof(kMagic));
  append_le(bytes, version, 4);
  append_le(bytes, header.size(), 8);
  bytes += header;
  const std::size_t digits_at = bytes.size() - kHeaderEnd.size() - kChecksumDigits;
  bytes += layout.payload;
  const std::string digits = fmt::format("{:016x}", detail::fnv1a_64(bytes));
  bytes.replace(digits_at, kChecksumDigits, digits);

  const std::string temporary = path + ".tmp";
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out)
      throw Error(fmt::format("{}: cannot open for writing", temporary), ErrorCode::FileAccess);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw Error(fmt::format("{}: write failed", temporary), ErrorCode::FileAccess);
  }
  std::error_code ec;
  std::filesystem::rename(temporary, path, ec);
  if (ec)
    throw Error(fmt::format("{}: cannot rename {} into place: {}", path, temporary, ec.message()),
                ErrorCode::FileAccess);
}

ModelReader ModelReader::open(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open model file", path), ErrorCode::FileAccess);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return parse(buffer.str(), path);
}

ModelReader ModelReader::section(const std::string& prefix) const {
  ModelReader part;
  part.path_ = fmt::format("{} (section {})", path_, prefix);
  part.format_version_ = format_version_;
  part.kind_ = text(prefix + "kind");
  const auto starts = [&](const std::string& name) { return name.compare(0, prefix.size(), prefix) == 0; };
  for (const auto& [key, value] : fields_) {
    if (starts(key)) part.fields_[key.substr(prefix.size())] = value;
  }
  for (const auto& [name, tensor] : tensors_) {
    if (starts(name)) part.tensors_[name.substr(prefix.size())] = tensor;
  }
  return part;
}

namespace {

// Where a tensor's bytes start and what they hold, so a later entry can
// point at them.
struct StoredSpan {
  std::uint64_t offset;
  std::string type;
  std::uint64_t count;
  bool operator<(const StoredSpan& other) const {
    return std::tie(offset, type, count) < std::tie(other.offset, other.type, other.count);
  }
};

// The number of values `shape` holds when they fit in `available`, else
// available + 1. Checked dimension by dimension, so a forged shape can
// neither overflow nor make the reader allocate more than the file's size.
std::uint64_t bounded_count(const std::vector<std::int64_t>& shape, std::uint64_t available) {
  for (auto d : shape) {
    if (d == 0) return 0;
  }
  std::uint64_t count = 1;
  for (auto d : shape) {
    const auto dim = static_cast<std::uint64_t>(d);
    if (dim != 0 && count > available / dim) return available + 1;
    count *= dim;
  }
  return count;
}

// Values of a q8 tensor: its rows' scales, then a signed byte a value.
std::vector<float> decode_int8_rows(const std::string& bytes, std::size_t start, std::size_t count,
                                    std::size_t width) {
  const std::size_t rows = count / width;
  std::vector<float> values(count);
  for (std::size_t r = 0; r < rows; ++r) {
    const auto raw = static_cast<std::uint32_t>(read_le(bytes, start + 4 * r, 4));
    float scale = 0.0f;
    std::memcpy(&scale, &raw, 4);
    for (std::size_t c = 0; c < width; ++c) {
      const auto step = static_cast<std::int8_t>(bytes[start + 4 * rows + r * width + c]);
      values[r * width + c] = scale * static_cast<float>(step);
    }
  }
  return values;
}

std::vector<float> decode_values(const std::string& bytes, std::size_t start, std::size_t count,
                                 bool half) {
  std::vector<float> values(count);
  for (std::size_t i = 0; i < count; ++i) {
    if (half) {
      values[i] = half_value(static_cast<std::uint16_t>(read_le(bytes, start + 2 * i, 2)));
    } else if (host_is_little_endian()) {
      std::memcpy(&values[i], bytes.data() + start + 4 * i, 4);
    } else {
      const auto raw = static_cast<std::uint32_t>(read_le(bytes, start + 4 * i, 4));
      std::memcpy(&values[i], &raw, 4);
    }
  }
  return values;
}

// One header entry: name, shape, type ("f32" when absent, as in format 1).
struct TensorEntry {
  std::string name;
  std::vector<std::int64_t> shape;
  std::string type;
  std::uint64_t offset = 0;
};

TensorEntry read_entry(simdjson::dom::element entry, std::uint32_t format_version,
                       const std::string& where) {
  TensorEntry out;
  std::string_view name;
  simdjson::dom::array shape;
  if (entry["name"].get_string().get(name) != simdjson::SUCCESS ||
      entry["shape"].get_array().get(shape) != simdjson::SUCCESS ||
      entry["offset"].get_uint64().get(out.offset) != simdjson::SUCCESS) {
    throw Error(where + "header: a tensor entry lacks name, shape or offset");
  }
  out.name = std::string(name);
  for (auto d : shape) {
    std::int64_t dim = 0;
    if (d.get_int64().get(dim) != simdjson::SUCCESS || dim < 0) {
      throw Error(fmt::format("{}tensor \"{}\": bad shape", where, out.name));
    }
    out.shape.push_back(dim);
  }
  std::string_view type = "f32";
  if (entry["type"].error() != simdjson::NO_SUCH_FIELD) {
    if (format_version < 2) {
      throw Error(fmt::format("{}tensor \"{}\": \"type\" needs model format 2, the file says {}",
                              where, out.name, format_version));
    }
    if (entry["type"].get_string().get(type) != simdjson::SUCCESS) {
      throw Error(fmt::format("{}tensor \"{}\": \"type\" is not a string", where, out.name));
    }
  }
  if (type != "f32" && type != "f16" && type != "q8") {
    throw Error(fmt::format("{}tensor \"{}\": unknown type \"{}\" (f32, f16 or q8)", where,
                            out.name, type));
  }
  if (type == "q8" && format_version < 3) {
    throw Error(fmt::format("{}tensor \"{}\": type \"q8\" needs model format 3, the file says {}",
                            where, out.name, format_version));
  }
  if (type == "q8" && !out.shape.empty() && out.shape.back() == 0) {
    throw Error(
        fmt::format("{}tensor \"{}\": a q8 tensor's rows cannot be empty", where, out.name));
  }
  out.type = std::string(type);
  return out;
}

// The payload bytes of `count` values of `type` in rows of `width`.
std::uint64_t stored_bytes(const std::string& type, std::uint64_t count, std::uint64_t width) {
  if (type == "q8") return count + 4 * (count / width);  // a scale per row, a byte a value
  return count * (type == "f16" ? 2 : 4);
}

// How many float32 bytes the tensors may decode to per payload byte: f16
// doubles, q8 nearly quadruples, and each name sharing a tensor's bytes
// decodes them again.
constexpr std::uint64_t kMaxDecodedPerPayloadByte = 16;

// The payload's bookkeeping while reading tensor entries in order.
struct PayloadCursor {
  std::size_t payload_size = 0;
  std::uint32_t format_version = 0;
  std::uint64_t expected_offset = 0;  // where the next new bytes start
  std::uint64_t decoded_bytes = 0;    // float32 bytes decoded so far
  std::set<StoredSpan> spans;         // the new bytes read so far

  // The number of values `entry` holds; throws unless its bytes follow the
  // previous new bytes or are exactly an earlier entry's.
  std::uint64_t place(const TensorEntry& entry, const std::string& where, bool& shared) {
    // At least one byte a value whatever the type, so `left` bounds the count.
    const std::uint64_t left = entry.offset <= payload_size ? payload_size - entry.offset : 0;
    const std::uint64_t count = bounded_count(entry.shape, left);
    const std::uint64_t width =
        entry.shape.empty() ? 1 : static_cast<std::uint64_t>(entry.shape.back());
    const std::uint64_t bytes = count > left ? left + 1 : stored_bytes(entry.type, count, width);
    shared = entry.offset != expected_offset &&
             spans.count(StoredSpan{entry.offset, entry.type, count}) != 0;
    if (entry.offset != expected_offset && (!shared || format_version < 2)) {
      throw Error(fmt::format("{}tensor \"{}\": offset {} where {}{} was expected", where,
                              entry.name, entry.offset, expected_offset,
                              format_version < 2 ? ""
                                                 : " (or an earlier tensor's offset, type "
                                                   "and size)"));
    }
    if (bytes > left) {
      throw Error(
          fmt::format("{}truncated: tensor \"{}\" of shape {} does not fit the {} bytes "
                      "left of the payload",
                      where, entry.name, shape_text(entry.shape), left));
    }
    // Shared bytes are decoded once per name: bounded, so a file of many
    // names for one tensor cannot make the reader allocate without limit
    // (a stack of several members sharing one projection stays well inside).
    decoded_bytes += count * 4;
    if (decoded_bytes > kMaxDecodedPerPayloadByte * static_cast<std::uint64_t>(payload_size)) {
      throw Error(
          fmt::format("{}tensor \"{}\": the tensors decode to more than {} times the "
                      "payload's {} bytes",
                      where, entry.name, kMaxDecodedPerPayloadByte, payload_size));
    }
    if (!shared) {
      spans.insert(StoredSpan{entry.offset, entry.type, count});
      expected_offset = entry.offset + bytes;
    }
    return count;
  }
};

// Reads every tensor of a file of `format_version`.
void read_tensors(simdjson::dom::array entries, const std::string& bytes, std::size_t payload_start,
                  std::uint32_t format_version, const std::string& where,
                  std::map<std::string, ModelTensor>& tensors) {
  PayloadCursor cursor;
  cursor.payload_size = bytes.size() - payload_start;
  cursor.format_version = format_version;
  for (auto element : entries) {
    TensorEntry entry = read_entry(element, format_version, where);
    bool shared = false;
    const std::uint64_t count = cursor.place(entry, where, shared);
    ModelTensor tensor;
    tensor.shape = std::move(entry.shape);
    const std::size_t start = payload_start + static_cast<std::size_t>(entry.offset);
    tensor.values = entry.type == "q8"
                        ? decode_int8_rows(bytes, start, static_cast<std::size_t>(count),
                                           row_width(tensor.shape))
                        : decode_values(bytes, start, static_cast<std::size_t>(count),
                                        entry.type == "f16");
    for (std::size_t i = 0; i < tensor.values.size(); ++i) {
      if (!std::isfinite(tensor.values[i])) {
        throw Error(
            fmt::format("{}tensor \"{}\" holds NaN or infinity at index {}", where, entry.name, i));
      }
    }
    tensors[entry.name] = std::move(tensor);
  }
  if (cursor.expected_offset != cursor.payload_size) {
    throw Error(fmt::format("{}payload has {} bytes but the tensors take {}", where,
                            cursor.payload_size, cursor.expected_offset));
  }
}

// One header field: a number, string, flag, or array of numbers or strings.
ModelField read_field(simdjson::dom::element value, const std::string& name,
                      const std::string& where) {
  switch (value.type()) {
    case simdjson::dom::element_type::INT64:
    case simdjson::dom::element_type::UINT64:
    case simdjson::dom::element_type::DOUBLE:
      return double(value);
    case simdjson::dom::element_type::STRING:
      return std::string(std::string_view(value));
    case simdjson::dom::element_type::BOOL:
      return bool(value);
    case simdjson::dom::element_type::ARRAY: {
      std::vector<double> numbers;
      std::vector<std::string> texts;
      for (auto item : simdjson::dom::array(value)) {
        if (item.is_number()) {
          numbers.push_back(double(item));
        } else if (item.is_string()) {
          texts.emplace_back(std::string_view(item));
        } else {
          throw Error(fmt::format("{}field \"{}\": arrays hold numbers or strings", where, name));
        }
      }
      if (!numbers.empty() && !texts.empty()) {
        throw Error(fmt::format("{}field \"{}\": mixes numbers and strings", where, name));
      }
      if (texts.empty()) return numbers;
      return texts;
    }
    default:
      throw Error(fmt::format("{}field \"{}\": unsupported JSON type", where, name));
  }
}

}  // namespace

namespace {

// Refuses a file whose checksum (see kChecksumMember) does not match its
// bytes. A file written before checksums has none to check: its header's
// JSON ends with the tensor table's "]}"; any other header must end with
// the checksum, exactly as written.
void check_sum(simdjson::dom::element root, const std::string& bytes, std::size_t header_end,
               const std::string& where) {
  const std::string_view header =
      std::string_view(bytes).substr(kPreambleBytes, header_end - kPreambleBytes);
  const std::size_t last = header.find_last_not_of(" \t\r\n");
  if (last != std::string_view::npos && last >= 1 && header.substr(last - 1, 2) == "]}") return;
  const std::size_t tail = kHeaderEnd.size() + kChecksumDigits;
  if (header.size() < tail || header.substr(header.size() - kHeaderEnd.size()) != kHeaderEnd) {
    throw Error(where + "damaged: its header ends with neither its tensors nor its checksum");
  }
  std::string_view stated;
  if (root["checksum"].get(stated) != simdjson::SUCCESS) {
    throw Error(where + "damaged: its header's last member is not its checksum");
  }
  const std::size_t digits_at = header_end - tail;
  std::uint64_t expected = 0;
  const auto [end, error] =
      std::from_chars(stated.data(), stated.data() + stated.size(), expected, 16);
  if (stated.size() != kChecksumDigits || error != std::errc() ||
      end != stated.data() + stated.size() ||
      std::string_view(bytes).substr(digits_at, kChecksumDigits) != stated) {
    throw Error(where + "header: the checksum must be the last member, 16 hex digits");
  }
  std::uint64_t hash = detail::fnv1a_64(std::string_view(bytes.data(), digits_at));
  hash = detail::fnv1a_64(std::string(kChecksumDigits, '0'), hash);
  hash = detail::fnv1a_64(std::string_view(bytes).substr(digits_at + kChecksumDigits), hash);
  if (hash != expected) {
    throw Error(where +
                "damaged: its checksum does not match its bytes (it changed after it was "
                "written); write it again");
  }
}

}  // namespace

ModelReader ModelReader::parse(const std::string& bytes, const std::string& origin) {
  ModelReader reader;
  reader.path_ = origin;
  const std::string where = origin + ": ";
  if (bytes.size() < kPreambleBytes || std::memcmp(bytes.data(), kMagic, sizeof(kMagic)) != 0) {
    throw Error(where + "not a torouter model file (no TORMODEL magic)");
  }
  reader.format_version_ = static_cast<std::uint32_t>(read_le(bytes, 8, 4));
  if (reader.format_version_ > kModelFormatVersion || reader.format_version_ == 0) {
    throw Error(fmt::format("{}model format version {} is newer than this torouter reads ({}); "
                            "upgrade torouter to load it",
                            where, reader.format_version_, kModelFormatVersion),
                ErrorCode::IncompatibleModel);
  }
  const std::uint64_t header_size = read_le(bytes, 12, 8);
  if (header_size > bytes.size() - kPreambleBytes) {
    throw Error(fmt::format("{}truncated: the header needs {} bytes, the file has {} after the "
                            "preamble",
                            where, header_size, bytes.size() - kPreambleBytes));
  }
  const std::size_t payload_start = kPreambleBytes + static_cast<std::size_t>(header_size);

  simdjson::dom::parser parser;
  simdjson::padded_string header(bytes.data() + kPreambleBytes, static_cast<std::size_t>(header_size));
  simdjson::dom::element root;
  if (auto error = parser.parse(header).get(root); error != simdjson::SUCCESS) {
    throw Error(where + "header is not valid JSON: " + simdjson::error_message(error));
  }
  std::string_view kind;
  if (root["kind"].get_string().get(kind) != simdjson::SUCCESS) {
    throw Error(where + "header: missing string field \"kind\"");
  }
  reader.kind_ = std::string(kind);

  simdjson::dom::object fields;
  if (root["fields"].get_object().get(fields) != simdjson::SUCCESS) {
    throw Error(where + "header: missing object \"fields\"");
  }
  for (auto [key, value] : fields) {
    reader.fields_[std::string(key)] = read_field(value, std::string(key), where);
  }

  simdjson::dom::array tensors;
  if (root["tensors"].get_array().get(tensors) != simdjson::SUCCESS) {
    throw Error(where + "header: missing array \"tensors\"");
  }
  read_tensors(tensors, bytes, payload_start, reader.format_version_, where, reader.tensors_);
  // Last: a file cut short is named truncated, not damaged.
  check_sum(root, bytes, payload_start, where);
  return reader;
}

const ModelField& ModelReader::field(const std::string& key, const char* expected) const {
  auto it = fields_.find(key);
  if (it == fields_.end()) {
    throw Error(fmt::format("{}missing field \"{}\" (expected {})", where(), key, expected));
  }
  return it->second;
}

double ModelReader::number(const std::string& key) const {
  const auto* v = std::get_if<double>(&field(key, "a number"));
  if (!v) throw Error(fmt::format("{}field \"{}\": expected a number", where(), key));
  return *v;
}

std::int64_t ModelReader::integer(const std::string& key, std::int64_t minimum,
                                  std::int64_t maximum) const {
  const double v = number(key);
  if (v != std::floor(v) || v < static_cast<double>(minimum) || v > static_cast<double>(maximum)) {
    throw Error(fmt::format("{}field \"{}\": expected a whole number in [{}, {}], got {}", where(),
                            key, minimum, maximum, v));
  }
  return static_cast<std::int64_t>(v);
}

const std::string& ModelReader::text(const std::string& key) const {
  const auto* v = std::get_if<std::string>(&field(key, "a string"));
  if (!v) throw Error(fmt::format("{}field \"{}\": expected a string", where(), key));
  return *v;
}

bool ModelReader::flag(const std::string& key) const {
  const auto* v = std::get_if<bool>(&field(key, "true or false"));
  if (!v) throw Error(fmt::format("{}field \"{}\": expected true or false", where(), key));
  return *v;
}

const std::vector<double>& ModelReader::numbers(const std::string& key) const {
  const ModelField& f = field(key, "an array of numbers");
  static const std::vector<double> kEmpty;
  if (const auto* texts = std::get_if<std::vector<std::string>>(&f); texts && texts->empty()) {
    return kEmpty;
  }
  const auto* v = std::get_if<std::vector<double>>(&f);
  if (!v) throw Error(fmt::format("{}field \"{}\": expected an array of numbers", where(), key));
  return *v;
}

const std::vector<std::string>& ModelReader::texts(const std::string& key) const {
  const ModelField& f = field(key, "an array of strings");
  static const std::vector<std::string> kEmpty;
  if (const auto* numbers = std::get_if<std::vector<double>>(&f); numbers && numbers->empty()) {
    return kEmpty;
  }
  const auto* v = std::get_if<std::vector<std::string>>(&f);
  if (!v) throw Error(fmt::format("{}field \"{}\": expected an array of strings", where(), key));
  return *v;
}

const ModelTensor& ModelReader::tensor(const std::string& name,
                                       const std::vector<std::int64_t>& shape) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw Error(fmt::format("{}missing tensor \"{}\"", where(), name));
  if (it->second.shape != shape) {
    throw Error(fmt::format("{}tensor \"{}\" has shape {}, expected {}", where(), name,
                            shape_text(it->second.shape), shape_text(shape)));
  }
  return it->second;
}

TOROUTER_END_NAMESPACE
