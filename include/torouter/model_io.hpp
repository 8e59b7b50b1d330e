// torouter/model_io.hpp: the one model file format every trained scorer uses.
//
// A model file is a small binary container:
//
//   bytes 0..7   "TORMODEL"
//   bytes 8..11  format version, uint32 little-endian (kModelFormatVersion)
//   bytes 12..19 header length in bytes, uint64 little-endian
//   header       a JSON object: {"format_version", "kind", "fields": {...},
//                "tensors": [{"name", "shape", "type", "offset"}...]}
//   payload      every tensor's values, little-endian, row-major, at the byte
//                offsets the header gives (from the payload start): "f32"
//                (float32), "f16" (IEEE half precision, two bytes a value)
//                or "q8" (rows of the last dimension: a float32 scale per
//                row, then one int8 a value; the value is scale * int8)
//
// The writer stores each tensor in the smallest of these that loses
// nothing: q8 when every row is whole int8 steps of its scale (the scale
// being the row's largest magnitude / 127 kept to 17 significant bits) and
// rows are wider than 4, else f16 when every value is a half-precision
// number, else f32; a scorer that rounds its weights so (src/
// compact_storage.hpp) shrinks its file and loads exactly what it trained.
// A tensor identical to an earlier one (two members of a stack fitting the
// same projection) points at the earlier one's bytes instead of repeating
// them. Each file is written in the oldest format that holds it, so older
// readers load what they can: format 1 (f32 only, no shared bytes, no
// "type"), 2 (f16, shared bytes) or 3 (q8); older formats are read as
// before.
//
// Scorers write their settings as named fields ("featurizer.num_buckets",
// "mlp.hidden") and their weights as named tensors with a `ModelWriter`, and
// read them back with a `ModelReader`, which refuses, naming the file and
// the problem, a wrong magic, a newer format version, a truncated file, a
// missing field or tensor, a wrong shape and NaN or infinite weights.
//
//   torouter::ModelWriter out("mlp");
//   out.set("mlp.hidden", 256);
//   out.add_tensor("mlp.head.weight", weights);   // any Eigen matrix
//   out.write("router.tormodel");
//
//   torouter::ModelReader in = torouter::ModelReader::open("router.tormodel");
//   int hidden = static_cast<int>(in.integer("mlp.hidden"));
//   in.tensor("mlp.head.weight", hidden, experts, weights);
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <variant>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// The newest model file format this library writes (only when a file
/// needs it; see above) and reads; it reads older ones too.
inline constexpr std::uint32_t kModelFormatVersion = 3;

/// A field's value in a model file header.
using ModelField =
    std::variant<double, std::string, bool, std::vector<double>, std::vector<std::string>>;

/// A named float tensor (row-major).
struct ModelTensor {
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

/// Collects fields and tensors, then writes a model file.
class ModelWriter {
 public:
  /// `kind` names the scorer that can read the file ("mlp", "knn", "tlite").
  explicit ModelWriter(std::string kind) : kind_(std::move(kind)) {}

  void set(const std::string& key, double value) { fields_[key] = value; }
  void set(const std::string& key, int value) { fields_[key] = static_cast<double>(value); }
  void set(const std::string& key, std::int64_t value) { fields_[key] = static_cast<double>(value); }
  void set(const std::string& key, std::uint64_t value) { fields_[key] = static_cast<double>(value); }
  void set(const std::string& key, const char* value) { fields_[key] = std::string(value); }
  void set(const std::string& key, std::string value) { fields_[key] = std::move(value); }
  void set(const std::string& key, bool value) { fields_[key] = value; }
  void set(const std::string& key, std::vector<double> value) { fields_[key] = std::move(value); }
  void set(const std::string& key, std::vector<std::string> value) { fields_[key] = std::move(value); }

  /// Adds a tensor of any shape.
  void add_tensor(const std::string& name, std::vector<std::int64_t> shape,
                  std::vector<float> values);
  /// Adds a matrix as a rows x cols tensor (stored row-major).
  template <typename Derived>
  void add_tensor(const std::string& name, const Eigen::MatrixBase<Derived>& matrix) {
    std::vector<float> values;
    values.reserve(static_cast<std::size_t>(matrix.size()));
    for (Eigen::Index r = 0; r < matrix.rows(); ++r) {
      for (Eigen::Index c = 0; c < matrix.cols(); ++c) {
        values.push_back(static_cast<float>(matrix(r, c)));
      }
    }
    add_tensor(name, {matrix.rows(), matrix.cols()}, std::move(values));
  }

  /// Adds every field and tensor of `part` with `prefix` before its name,
  /// and its kind as the field `prefix` + "kind": a model made of models.
  void add_section(const std::string& prefix, const ModelWriter& part);

  /// Writes the file (to `path`.tmp, then renamed, so a crash leaves no
  /// half-written model); throws `Error` when it cannot.
  void write(const std::string& path) const;

  const std::string& kind() const { return kind_; }
  const std::map<std::string, ModelField>& fields() const { return fields_; }

 private:
  std::string kind_;
  std::map<std::string, ModelField> fields_;
  std::map<std::string, ModelTensor> tensors_;
};

/// A model file, read and checked. Accessors throw `Error` naming the file
/// and the field or tensor when it is missing or of the wrong type or shape.
class ModelReader {
 public:
  /// Reads and checks `path`: magic, version, header, payload size, and
  /// that every tensor is finite.
  static ModelReader open(const std::string& path);
  /// Checks and reads a model file's bytes; `origin` names them in errors.
  static ModelReader parse(const std::string& bytes, const std::string& origin);

  const std::string& path() const { return path_; }
  const std::string& kind() const { return kind_; }
  std::uint32_t format_version() const { return format_version_; }

  bool has(const std::string& key) const { return fields_.count(key) != 0; }
  double number(const std::string& key) const;
  /// A number that must be a whole number within [minimum, maximum].
  std::int64_t integer(const std::string& key, std::int64_t minimum = std::numeric_limits<std::int64_t>::min(),
                       std::int64_t maximum = std::numeric_limits<std::int64_t>::max()) const;
  const std::string& text(const std::string& key) const;
  bool flag(const std::string& key) const;
  const std::vector<double>& numbers(const std::string& key) const;
  const std::vector<std::string>& texts(const std::string& key) const;

  /// True when the file holds tensor `name`.
  bool has_tensor(const std::string& name) const { return tensors_.count(name) != 0; }
  /// Tensor `name`, which must have exactly `shape`.
  const ModelTensor& tensor(const std::string& name, const std::vector<std::int64_t>& shape) const;
  /// Tensor `name` into a matrix, which must be rows x cols.
  template <typename Derived>
  void tensor(const std::string& name, Eigen::Index rows, Eigen::Index cols,
              Eigen::PlainObjectBase<Derived>& out) const {
    const ModelTensor& t = tensor(name, {rows, cols});
    out.resize(rows, cols);
    std::size_t i = 0;
    for (Eigen::Index r = 0; r < rows; ++r) {
      for (Eigen::Index c = 0; c < cols; ++c) {
        out(r, c) = static_cast<typename Derived::Scalar>(t.values[i++]);
      }
    }
  }

  /// The fields and tensors whose names start with `prefix`, the prefix
  /// removed, as a reader of kind `prefix` + "kind" (see
  /// `ModelWriter::add_section`); its errors name the file and the section.
  ModelReader section(const std::string& prefix) const;

  /// An `Error` message prefix naming the file: "<path>: ".
  std::string where() const { return path_ + ": "; }

 private:
  const ModelField& field(const std::string& key, const char* expected) const;

  std::string path_;
  std::string kind_;
  std::uint32_t format_version_ = 0;
  std::map<std::string, ModelField> fields_;
  std::map<std::string, ModelTensor> tensors_;
};

TOROUTER_END_NAMESPACE
