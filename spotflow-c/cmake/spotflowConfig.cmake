# CMake package of spotflow-rs's C library (find_package(spotflow)), installed as
# <prefix>/lib/cmake/spotflow/ beside <prefix>/include/spotflow.h and <prefix>/lib/libspotflow.*.
# Targets:
#   spotflow::spotflow         the shared library (libspotflow.so)
#   spotflow::spotflow_static  the static library (libspotflow.a) and what it needs from the
#                              system (threads, maths, dynamic loading)
get_filename_component(_spotflow_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)
include(CMakeFindDependencyMacro)
find_dependency(Threads)

if(NOT TARGET spotflow::spotflow)
  add_library(spotflow::spotflow SHARED IMPORTED)
  set_target_properties(spotflow::spotflow PROPERTIES
    IMPORTED_LOCATION "${_spotflow_prefix}/lib/libspotflow.so"
    IMPORTED_SONAME "libspotflow.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_spotflow_prefix}/include")
endif()
if(NOT TARGET spotflow::spotflow_static)
  add_library(spotflow::spotflow_static STATIC IMPORTED)
  set_target_properties(spotflow::spotflow_static PROPERTIES
    IMPORTED_LOCATION "${_spotflow_prefix}/lib/libspotflow.a"
    INTERFACE_INCLUDE_DIRECTORIES "${_spotflow_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;m;${CMAKE_DL_LIBS}")
endif()
unset(_spotflow_prefix)
