# os module placeholder
