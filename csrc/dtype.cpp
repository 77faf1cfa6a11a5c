#include <stdexcept>
#include <string>

#include "lst_step.h"

namespace lst_fast {

DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "float64") return DType::kFloat64;
  if (name == "float16") return DType::kFloat16;
  if (name == "bfloat16") return DType::kBFloat16;
  throw std::invalid_argument("lst_step: dtype must be float32, float64, float16 or bfloat16, got '" + name + "'");
}

}  // namespace lst_fast
