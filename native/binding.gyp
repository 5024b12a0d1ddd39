{
  "variables": {
    "with_c10d": "<!(node locate-libtorch.mjs c10d)"
  },
  "targets": [
    {
      "target_name": "hemato_native",
      "sources": ["src/addon.cc", "src/convert.cc", "src/tensor_ops.cc"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "<!@(node locate-libtorch.mjs include)"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED", "HEMATO_NCCL_REASON=\"<!(node locate-libtorch.mjs ncclReason)\""],
      "cflags!": ["-fno-exceptions", "-fno-rtti"],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-O2", "-Wno-unused-parameter", "-Wno-deprecated-declarations"],
      "libraries": ["<!@(node locate-libtorch.mjs ldflags)"],
      "conditions": [
        [
          "with_c10d==1",
          {
            "sources": ["src/c10d.cc"],
            "defines": ["HEMATO_WITH_C10D", "USE_C10D_GLOO"],
            "include_dirs": ["<!@(node locate-libtorch.mjs c10dInclude)"]
          },
          {
            "defines": ["HEMATO_C10D_UNAVAILABLE=\"<!(node locate-libtorch.mjs c10dReason)\""]
          }
        ]
      ]
    }
  ]
}
