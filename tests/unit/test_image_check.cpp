// The pure judgements of a base image: its first bytes and size, and qemu-img check's verdict.
#include <catch2/catch.hpp>
#include <string>

#include "lifecycle/image_check.hpp"

using namespace stackemu::lifecycle;

namespace {

const std::filesystem::path image = "/images/base.qcow2";

std::string message(const stackemu::result<void>& r) {
    return r ? std::string("ok") : r.error().message;
}

}  // namespace

TEST_CASE("image header: a qcow2 header passes", "[image-check]") {
    std::string head = "QFI\xfb";
    head += std::string(100, '\0');
    CHECK(message(judge_image_header(head, 196616, image)) == "ok");
}

TEST_CASE("image header: empty truncated text and foreign files are refused", "[image-check]") {
    CHECK_THAT(message(judge_image_header("", 0, image)),
               Catch::Contains("/images/base.qcow2 is empty (0 bytes)"));
    CHECK_THAT(message(judge_image_header("QFI\xfb\0\0\0\x03", 40, image)),
               Catch::Contains("is truncated: 40 bytes, less than a qcow2 header"));
    CHECK_THAT(message(judge_image_header("version: 1\nname: x\n", 19, image)),
               Catch::Contains("not a qcow2 disk but a text file (it begins \"version: 1\")"));
    CHECK_THAT(message(judge_image_header(std::string("\x7f"
                                                      "ELF\x02\x01",
                                                      6),
                                          4096, image)),
               Catch::Contains("does not begin with qcow2's signature"));
    // Every refusal says how to get a good image.
    CHECK_THAT(message(judge_image_header("", 0, image)),
               Catch::Contains("`stackemu build-image`") && Catch::Contains("`stackemu pull`"));
}

TEST_CASE("image check: clean and leaked pass, corruption is named", "[image-check]") {
    CHECK(message(judge_image_check({0, "", ""}, image)) == "ok");
    CHECK(message(judge_image_check({3, "2 leaked clusters were found on the image.\n", ""},
                                    image)) == "ok");
    const tool_result corrupt{
        2, "\n3 errors were found on the image.\n",
        "ERROR: counting reference for region exceeding the end of the file by one cluster or "
        "more: offset 0x30000 size 0x8\nERROR cluster 0 refcount=0 reference=1\n"};
    CHECK_THAT(message(judge_image_check(corrupt, image)),
               Catch::Contains("is damaged or truncated (qemu-img check: ERROR: counting "
                               "reference for region exceeding the end of the file"));
    const tool_result unreadable{1, "",
                                 "qemu-img: Could not open 'x': Image is not in qcow2 format\n"};
    CHECK_THAT(message(judge_image_check(unreadable, image)),
               Catch::Contains("(qemu-img check: Could not open 'x': Image is not in qcow2 "
                               "format)"));
    CHECK_THAT(message(judge_image_check({1, "", ""}, image)),
               Catch::Contains("(qemu-img check: exit status 1)"));
}
